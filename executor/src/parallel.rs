//! Work split over the executor's threads without changing its result: items are cut into
//! contiguous ranges, one per thread, and the results are put back together in item order, so
//! the outcome is the same on any number of threads.

use std::ops::Range;

/// How row work is shared out: over up to `threads` threads, each taking at least
/// `min_per_thread` items (below that, thread start-up costs more than it saves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Split {
    pub threads: usize,
    pub min_per_thread: usize,
}

impl Split {
    /// Everything on the calling thread.
    pub const SERIAL: Split = Split {
        threads: 1,
        min_per_thread: 1,
    };

    pub fn map<T: Send, E: Send>(
        self,
        items: usize,
        f: impl Fn(Range<usize>) -> Result<Vec<T>, E> + Sync,
    ) -> Result<Vec<T>, E> {
        map_ranges(items, self.threads, self.min_per_thread, f)
    }

    /// `f` on each of `items`, in contiguous runs of items, one run per thread, for work
    /// `weight` rows in all (fewer than `min_per_thread` rows per thread run on the calling
    /// thread); the results in item order.
    pub fn map_each<T: Send, R: Send>(
        self,
        items: Vec<T>,
        weight: usize,
        f: impl Fn(T) -> R + Sync,
    ) -> Vec<R> {
        let threads = self
            .threads
            .min(weight / self.min_per_thread.max(1))
            .min(items.len())
            .max(1);
        if threads == 1 {
            return items.into_iter().map(f).collect();
        }
        let per_thread = items.len().div_ceil(threads);
        let mut runs: Vec<Vec<T>> = Vec::with_capacity(threads);
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            runs.push(items.by_ref().take(per_thread).collect());
        }
        let mut results: Vec<Vec<R>> = runs.iter().map(|_| Vec::new()).collect();
        rayon::in_place_scope(|scope| {
            let f = &f;
            let mut runs = runs.into_iter().zip(results.iter_mut());
            let first = runs.next();
            for (run, out) in runs {
                scope.spawn(move |_| *out = run.into_iter().map(f).collect());
            }
            if let Some((run, out)) = first {
                *out = run.into_iter().map(f).collect();
            }
        });
        results.into_iter().flatten().collect()
    }
}

/// Drops `value` on the worker pool rather than on the calling thread. A block's parsed
/// statements, calls and replaced versions are millions of small allocations; freeing them is
/// a tenth of the block's time on the thread that runs the stages, and no later work waits for
/// it. Nothing executed or hashed depends on when it happens.
pub(crate) fn drop_elsewhere<T: Send + 'static>(value: T) {
    rayon::spawn(move || drop(value));
}

/// `f` over `0..items`, as `f(range)` calls on up to `threads` threads, concatenated in order:
/// the first range on the calling thread, the others on the process's worker pool (long-lived
/// threads, so their allocator heaps stay warm between calls). Runs on the calling thread alone
/// when there is one thread or fewer than `min_per_thread` items for each. The first error (in
/// item order) is returned; a panic in `f` is resumed on the calling thread.
pub(crate) fn map_ranges<T, E, F>(
    items: usize,
    threads: usize,
    min_per_thread: usize,
    f: F,
) -> Result<Vec<T>, E>
where
    T: Send,
    E: Send,
    F: Fn(Range<usize>) -> Result<Vec<T>, E> + Sync,
{
    let threads = threads.min(items / min_per_thread.max(1)).max(1);
    if threads == 1 {
        return f(0..items);
    }
    let per_thread = items.div_ceil(threads);
    let ranges: Vec<Range<usize>> = (0..items)
        .step_by(per_thread)
        .map(|start| start..(start + per_thread).min(items))
        .collect();
    let mut parts: Vec<Option<Result<Vec<T>, E>>> = ranges.iter().map(|_| None).collect();
    rayon::in_place_scope(|scope| {
        let f = &f;
        let (first, rest) = parts.split_at_mut(1);
        for (slot, range) in rest.iter_mut().zip(&ranges[1..]) {
            let range = range.clone();
            scope.spawn(move |_| *slot = Some(f(range)));
        }
        first[0] = Some(f(ranges[0].clone()));
    });
    let mut out = Vec::with_capacity(items);
    for part in parts {
        out.extend(part.expect("every range ran")?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_in_item_order_on_any_number_of_threads() {
        let square =
            |range: Range<usize>| -> Result<Vec<usize>, String> { Ok(range.map(|i| i * i).collect()) };
        let expected: Vec<usize> = (0..1_001).map(|i| i * i).collect();
        for threads in [1, 2, 3, 8] {
            for min in [1, 10, 2_000] {
                assert_eq!(map_ranges(1_001, threads, min, square), Ok(expected.clone()));
            }
        }
        assert_eq!(map_ranges(0, 4, 1, square), Ok(vec![]));
        for threads in [1, 2, 3, 8] {
            let split = Split {
                threads,
                min_per_thread: 1,
            };
            let items: Vec<usize> = (0..17).collect();
            let squares: Vec<usize> = (0..17).map(|i| i * i).collect();
            assert_eq!(split.map_each(items, 17, |i| i * i), squares);
            assert_eq!(split.map_each(Vec::<usize>::new(), 0, |i| i), Vec::<usize>::new());
        }
        // The first failing range's error, whichever thread finishes first.
        let failing = |range: Range<usize>| -> Result<Vec<usize>, String> {
            match range.clone().find(|i| i % 300 == 299) {
                Some(i) => Err(format!("item {i}")),
                None => Ok(range.collect()),
            }
        };
        for threads in [1, 2, 4] {
            assert_eq!(
                map_ranges(1_000, threads, 1, failing),
                Err("item 299".to_string())
            );
        }
    }
}
