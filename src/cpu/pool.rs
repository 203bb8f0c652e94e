//! The fast backend's threads (native only): `threads - 1` workers that poll for the next job
//! between jobs, with the calling thread as the last one.
//!
//! Why not rayon: a decode step is some 150 parallel jobs (four products and attention per
//! layer, then the head) a few microseconds of serial work apart. Between them rayon's idle
//! workers call `sched_yield` and then sleep on a futex, and its caller hands each job over
//! through a queue: on SmolLM2-135M (2 threads) 8% of decode time went to `sched_yield` and 2% to
//! futex sleeps and wake-ups. Here an idle worker spins on an epoch counter for [`SPIN`] before it
//! sleeps, a job is one pointer published by bumping that counter, and the caller does its own
//! share of every job instead of waiting for a pool thread to start it.
//!
//! A job is a closure every thread calls once; it hands out its tasks itself (see
//! `Fast::for_tasks`, an atomic counter). The caller returns only after every worker has left the
//! job, which is what makes lending the workers a borrowed closure sound.

use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker polls for the next job before it sleeps: far longer than the gaps
/// inside a decode step and between steps, short enough that an idle model holds no core.
const SPIN: Duration = Duration::from_millis(2);

/// A job with its lifetime erased: valid while [`Pool::run`] waits for `pending` to reach 0.
type Job = *const (dyn Fn() + Sync);

thread_local! {
    /// Set on the pool's workers, and on a caller while it runs its share: a job that starts a
    /// job of its own runs that one alone (the workers are busy with the outer one).
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

struct Shared {
    /// Bumped once per job (and once to stop); workers run the job of each new value.
    epoch: AtomicUsize,
    job: UnsafeCell<Option<Job>>,
    /// Workers that have not yet left the current job.
    pending: AtomicUsize,
    stop: AtomicBool,
    /// A worker's share panicked (the caller panics in turn).
    panicked: AtomicBool,
    /// Sleeping workers wait on `wake` under `sleep`; `sleepers` tells the caller to notify.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the one caller holding `Pool::caller`, before it publishes a
// new epoch (workers read it after seeing that epoch) and after every worker has left the job.
// The job itself is `Sync`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time (a model is driven from one thread, but nothing else stops two).
    caller: Mutex<()>,
}

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pool {
    /// A pool of `threads` threads in all: the caller and `threads - 1` workers.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut pool = Pool {
            shared,
            workers: vec![],
            caller: Mutex::new(()),
        };
        for i in 1..threads {
            let shared = pool.shared.clone();
            let worker = std::thread::Builder::new()
                .name(format!("layerskip-cpu-{i}"))
                .spawn(move || work(&shared))?;
            // Pushed at once: a failure further on still stops the ones started (Drop).
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// Runs `job` on every thread of the pool, the caller included, and returns when all have
    /// returned from it. A panic in any of them is raised here.
    pub fn run(&self, job: &(dyn Fn() + Sync)) {
        if self.workers.is_empty() || IN_JOB.get() {
            return job();
        }
        let _one = lock(&self.caller);
        let shared = &*self.shared;
        // SAFETY (lifetime erasure): workers use the pointer only between the epoch below and
        // their decrement of `pending`, and this function does not return before `pending` is 0.
        let erased: Job = unsafe { std::mem::transmute::<&(dyn Fn() + Sync), Job>(job) };
        // SAFETY: no worker reads `job` now: the last job's `pending` reached 0 and no new epoch
        // is published yet.
        unsafe { *shared.job.get() = Some(erased) };
        shared.pending.store(self.workers.len(), Ordering::Relaxed);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _sleep = lock(&shared.sleep);
            shared.wake.notify_all();
        }
        IN_JOB.set(true);
        let mine = catch_unwind(AssertUnwindSafe(job));
        IN_JOB.set(false);
        // Even after a panic: the workers may still be inside `job`.
        while shared.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        // SAFETY: every worker has left the job.
        unsafe { *shared.job.get() = None };
        let theirs = shared.panicked.swap(false, Ordering::Relaxed);
        if let Err(panic) = mine {
            resume_unwind(panic);
        }
        if theirs {
            panic!("a CPU worker thread panicked");
        }
    }

    /// Runs `f(state, i)` for each task i in 0..tasks on the pool's threads, each with its own
    /// `state`. Thread k takes the k-th contiguous share of the tasks in order and then takes
    /// what is left of the others' from their far ends: a thread reads one stretch of a weight
    /// matrix front to back, and a thread that starts late, or is preempted, is covered for.
    /// On SmolLM2-135M (2 threads, medians of 10 interleaved 300-token runs) tasks dealt out one
    /// at a time, which interleaves the threads' stretches, decoded no faster than rayon had;
    /// contiguous shares decoded 7-10% faster.
    pub fn for_tasks<S: Default>(&self, tasks: usize, f: impl Fn(&mut S, usize) + Sync) {
        let threads = self.workers.len() + 1;
        if tasks > u32::MAX as usize {
            // A share packs its bounds in 32 bits each; a task covers a weight row or more, so no
            // matrix makes this many.
            let mut state = S::default();
            return (0..tasks).for_each(|i| f(&mut state, i));
        }
        let shares: Vec<Share> = (0..threads)
            .map(|k| Share::new(k * tasks / threads, (k + 1) * tasks / threads))
            .collect();
        let ticket = AtomicUsize::new(0);
        self.run(&|| {
            let mut state = S::default();
            let me = ticket.fetch_add(1, Ordering::Relaxed) % threads;
            while let Some(i) = shares[me].front() {
                f(&mut state, i);
            }
            for k in 1..threads {
                let other = &shares[(me + k) % threads];
                while let Some(i) = other.back() {
                    f(&mut state, i);
                }
            }
        });
    }
}

/// The tasks `start..end` of one thread's share, packed in one word so that the owner taking
/// from the front and others taking from the back never both get the same task.
struct Share(AtomicU64);

impl Share {
    fn new(start: usize, end: usize) -> Self {
        Share(AtomicU64::new(Self::pack(start, end)))
    }

    fn pack(start: usize, end: usize) -> u64 {
        ((start as u64) << 32) | end as u64
    }

    /// Takes a task from the front (`from_front`) or the back, if any is left.
    fn take(&self, from_front: bool) -> Option<usize> {
        let mut now = self.0.load(Ordering::Relaxed);
        loop {
            let (start, end) = ((now >> 32) as usize, (now & u64::from(u32::MAX)) as usize);
            if start >= end {
                return None;
            }
            let (next, task) = match from_front {
                true => (Self::pack(start + 1, end), start),
                false => (Self::pack(start, end - 1), end - 1),
            };
            match self
                .0
                .compare_exchange_weak(now, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(task),
                Err(seen) => now = seen,
            }
        }
    }

    fn front(&self) -> Option<usize> {
        self.take(true)
    }

    fn back(&self) -> Option<usize> {
        self.take(false)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let shared = &*self.shared;
        shared.stop.store(true, Ordering::SeqCst);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _sleep = lock(&shared.sleep);
            shared.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// A worker: waits for each new epoch and runs its job.
fn work(shared: &Shared) {
    IN_JOB.set(true);
    let mut seen = 0;
    while let Some(epoch) = wait(shared, seen) {
        seen = epoch;
        // SAFETY: the job was stored before this epoch was published (the SeqCst bump and load
        // order them) and stays alive until this worker leaves it below.
        if let Some(job) = unsafe { *shared.job.get() } {
            if catch_unwind(AssertUnwindSafe(|| unsafe { (*job)() })).is_err() {
                shared.panicked.store(true, Ordering::Relaxed);
            }
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

/// The first epoch after `seen` (`None` once the pool stops): polled for [`SPIN`], then slept
/// for.
fn wait(shared: &Shared, seen: usize) -> Option<usize> {
    let new = |epoch: usize| {
        (epoch != seen).then(|| (!shared.stop.load(Ordering::SeqCst)).then_some(epoch))
    };
    let start = Instant::now();
    for spins in 1u32.. {
        if let Some(next) = new(shared.epoch.load(Ordering::SeqCst)) {
            return next;
        }
        if spins % 1024 == 0 && start.elapsed() > SPIN {
            break;
        }
        std::hint::spin_loop();
    }
    let mut guard = lock(&shared.sleep);
    shared.sleepers.fetch_add(1, Ordering::SeqCst);
    // A caller that bumps the epoch after this check sees `sleepers` and notifies under the
    // lock, which this wait holds until it sleeps.
    let next = loop {
        if let Some(next) = new(shared.epoch.load(Ordering::SeqCst)) {
            break next;
        }
        guard = shared.wake.wait(guard).unwrap_or_else(|p| p.into_inner());
    };
    shared.sleepers.fetch_sub(1, Ordering::SeqCst);
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every task runs exactly once whatever the threads, jobs follow each other (with sleeps
    /// between them long enough for the workers to sleep), nested jobs run inline, and a panic
    /// in a share reaches the caller and leaves the pool usable.
    #[test]
    fn jobs_run_every_task_once_and_panics_reach_the_caller() {
        for threads in [1, 2, 4] {
            let pool = Pool::new(threads).unwrap();
            for round in 0..50 {
                let tasks = [0, 1, 7, 1000][round % 4];
                let done: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                let next = AtomicUsize::new(0);
                pool.run(&|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= tasks {
                        break;
                    }
                    // A nested job runs on this thread alone.
                    let inner = AtomicUsize::new(0);
                    pool.run(&|| {
                        inner.fetch_add(1, Ordering::Relaxed);
                    });
                    assert_eq!(inner.load(Ordering::Relaxed), 1);
                    done[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(done.iter().all(|d| d.load(Ordering::Relaxed) == 1));
                if round == 10 {
                    std::thread::sleep(SPIN * 3);
                }
            }
            // Shares with stealing: every task once, each thread's state its own, and a thread
            // held up in its first task has the rest of its share taken over.
            for tasks in [2, 3, 64, 1001] {
                let done: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                pool.for_tasks(tasks, |seen: &mut Vec<usize>, i| {
                    if i == 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    assert!(seen.iter().all(|&j| j != i), "task {i} twice on one thread");
                    seen.push(i);
                    done[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    done.iter().all(|d| d.load(Ordering::Relaxed) == 1),
                    "{threads} threads, {tasks} tasks"
                );
            }
            let hit = catch_unwind(AssertUnwindSafe(|| pool.run(&|| panic!("share"))));
            assert!(hit.is_err(), "{threads} threads");
            let ran = AtomicUsize::new(0);
            pool.run(&|| {
                ran.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(ran.load(Ordering::Relaxed), threads);
        }
    }
}
