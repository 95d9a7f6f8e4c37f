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
        // Every transaction is admitted before the last one commits.
        assert!(report.admitted_elapsed > std::time::Duration::ZERO);
        assert!(report.admitted_elapsed <= report.elapsed);
        assert!(report.to_string().contains("admission "), "{report}");
    }
}

/// `chainql bench --validators 2` at a small size: two validator processes commit every
/// transaction, agree on the state root, and every transaction gets a latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_network_bench_commits_everything_on_every_validator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = chainql_server::bench_network::run_network_bench(
        dir.path(),
        &BenchConfig {
            workload: Workload::Transfer,
            transactions: 40,
            clients: 4,
            rows: 100,
            block_interval_ms: 5,
            block_transactions_max: 5_000,
            batch: 1,
            log_partitions: 4,
        },
        2,
        std::path::Path::new(env!("CARGO_BIN_EXE_chainql")),
    )
    .await
    .expect("network bench");
    assert_eq!(
        (report.transactions, report.failed, report.validators),
        (40, 0, 2)
    );
    assert!(report.blocks >= 1);
    assert!(report.latency(0.5) <= report.latency(0.99));
    assert!(report.latency(1.0) > std::time::Duration::ZERO);
    let text = report.to_string();
    assert!(text.contains("submit → commit"), "{text}");
}
