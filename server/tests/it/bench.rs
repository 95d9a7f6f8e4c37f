//! `chainql bench` end to end at a small size: the run commits every transaction, the restart
//! replays to the same root, and the node reopens from the checkpoint it wrote.

use chainql_server::bench::{BenchConfig, Workload, run_bench};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_bench_runs_restarts_and_reopens_from_its_checkpoint() {
    for workload in [Workload::Update, Workload::Transfer] {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = run_bench(
            dir.path(),
            &BenchConfig {
                workload,
                transactions: 64,
                clients: 4,
                rows: 100,
                block_interval_ms: 5,
                block_transactions_max: 5_000,
                batch: 8,
                log_partitions: 2,
            },
        )
        .await
        .expect("bench");
        assert_eq!(report.transactions, 64);
        assert_eq!(report.failed, 0);
        // The set-up's transactions and the bench's were all replayed.
        assert!(report.replay_transactions > 64, "{}", report.replay_transactions);
        assert!(report.checkpoint_bytes > 0);
    }
}
