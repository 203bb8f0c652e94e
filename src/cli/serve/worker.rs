//! The model on a thread of its own behind a bounded queue. HTTP handlers submit jobs and read
//! the events of theirs; a full queue is refused at once (the handler answers 503). A client
//! that goes away drops its handler: a job still queued gives up its place at once (its
//! `Ticket`), a running one stops at its next token (its event receiver is gone). One model, one
//! job at a time: the KV cache and what adaptive speculation learned stay with the model, so a
//! conversation's next turn reuses its prefix.

use layerskip::openai::OpenAiRequest;
use layerskip::{Completion, Error, GenerateRequest, Model, Result, StopReason, TokenKind};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// One request for the model.
struct Job {
    /// Validated for its endpoint (see `OpenAiRequest::complete`).
    request: OpenAiRequest,
    events: UnboundedSender<Event>,
    /// QUEUED, then TAKEN by the model or WITHDRAWN by its ticket, whichever comes first.
    state: Arc<AtomicU8>,
}

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

/// What a job reports, in order: `Started` or `Failed`; then, when streamed, `Text` pieces; then
/// `Done` or `Failed`.
pub enum Event {
    /// The prompt is rendered, tokenized and fits the context: generation begins.
    Started,
    /// Output text as it is produced (streamed requests only).
    Text(String, TokenKind),
    Done(Box<Completion>),
    Failed(Error),
}

/// The sending end of the queue, shared by the handlers.
pub struct Worker {
    jobs: Sender<Job>,
    /// Jobs that may wait while one runs.
    queue: usize,
    counts: Arc<Counts>,
    /// Positions the model's KV cache holds.
    pub max_context: usize,
}

/// Why a job was not queued.
pub enum Refused {
    /// `queue` jobs already wait.
    Full,
    /// The model's thread is gone (after an internal error).
    Stopped,
}

/// A handler's hold on its queued job. Dropped before the model takes the job up (the client
/// went away), it frees the job's place in the queue at once, so that clients which time out
/// and retry do not fill the queue with jobs nobody waits for.
pub struct Ticket {
    state: Arc<AtomicU8>,
    counts: Arc<Counts>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let withdrawn =
            self.state
                .compare_exchange(QUEUED, WITHDRAWN, Ordering::SeqCst, Ordering::SeqCst);
        if withdrawn.is_ok() {
            self.counts.admitted.fetch_sub(1, Ordering::SeqCst);
            self.counts.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// What the model's thread has done, for /health.
#[derive(Default)]
pub struct Counts {
    /// Jobs accepted and not yet finished or withdrawn: the one running and those waiting.
    admitted: AtomicUsize,
    /// 1 while the model runs a job.
    running: AtomicUsize,
    /// Jobs that ran to their end.
    finished: AtomicUsize,
    /// Jobs that ended in an error (a bad request found on the model's thread included).
    failed: AtomicUsize,
    /// Jobs whose client went away, in the queue or while generating.
    cancelled: AtomicUsize,
    /// The model's thread has stopped after an internal error.
    stopped: AtomicBool,
}

impl Counts {
    pub fn to_json(&self) -> serde_json::Value {
        let get = |n: &AtomicUsize| n.load(Ordering::SeqCst);
        let running = get(&self.running);
        serde_json::json!({
            "queued": get(&self.admitted).saturating_sub(running),
            "running": running,
            "finished": get(&self.finished),
            "failed": get(&self.failed),
            "cancelled": get(&self.cancelled),
        })
    }
}

impl Worker {
    /// Starts the model's thread: `load` runs there (the model never crosses threads); returns
    /// once it has loaded and `base` (the server's defaults) is checked against it, or with the
    /// error. `queue` jobs may wait while one runs.
    pub fn start(
        load: impl FnOnce() -> Result<Model> + Send + 'static,
        queue: usize,
        base: GenerateRequest,
    ) -> Result<Worker> {
        let (jobs, inbox) = channel::<Job>();
        let (loaded, is_loaded) = std::sync::mpsc::channel();
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        std::thread::Builder::new()
            .name("model".into())
            .spawn(
                move || match load().and_then(|m| m.options(&base).map(|_| m)) {
                    Ok(mut model) => {
                        let _ = loaded.send(Ok(model.max_context()));
                        serve(&mut model, &base, &inbox, &shared);
                    }
                    Err(e) => {
                        let _ = loaded.send(Err(e));
                    }
                },
            )
            .map_err(|e| Error::Invalid(format!("cannot start the model's thread: {e}")))?;
        let max_context = is_loaded
            .recv()
            .map_err(|_| Error::Invalid("the model's thread ended while loading".into()))??;
        Ok(Worker {
            jobs,
            queue,
            counts,
            max_context,
        })
    }

    /// Queues a request; refused when `queue` jobs already wait behind the running one, or when
    /// the model's thread has stopped. Keep the ticket until the job has started.
    pub fn submit(
        &self,
        request: OpenAiRequest,
        events: UnboundedSender<Event>,
    ) -> std::result::Result<Ticket, Refused> {
        let admitted = &self.counts.admitted;
        let state = Arc::new(AtomicU8::new(QUEUED));
        let job = Job {
            request,
            events,
            state: state.clone(),
        };
        let refused = if admitted.fetch_add(1, Ordering::SeqCst) > self.queue {
            Refused::Full
        } else if self.jobs.send(job).is_err() {
            Refused::Stopped
        } else {
            return Ok(Ticket {
                state,
                counts: self.counts.clone(),
            });
        };
        admitted.fetch_sub(1, Ordering::SeqCst);
        Err(refused)
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Whether the model's thread has stopped after an internal error.
    pub fn stopped(&self) -> bool {
        self.counts.stopped.load(Ordering::SeqCst)
    }
}

fn serve(model: &mut Model, base: &GenerateRequest, inbox: &Receiver<Job>, counts: &Counts) {
    while let Ok(job) = inbox.recv() {
        let taken = job
            .state
            .compare_exchange(QUEUED, TAKEN, Ordering::SeqCst, Ordering::SeqCst);
        if taken.is_err() {
            // Withdrawn: its ticket has already freed its place and counted it.
            continue;
        }
        if job.events.is_closed() {
            counts.cancelled.fetch_add(1, Ordering::SeqCst);
            counts.admitted.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        counts.running.store(1, Ordering::SeqCst);
        // A panic (there should be none) may leave the model half-updated: the job fails, the
        // thread stops, and /health and every later request say so.
        let outcome = catch_unwind(AssertUnwindSafe(|| run(model, base, &job)));
        let (event, count) = match outcome {
            Ok(Ok(c)) if c.stats.stop_reason == StopReason::Cancelled => {
                (Event::Done(Box::new(c)), &counts.cancelled)
            }
            Ok(Ok(c)) => (Event::Done(Box::new(c)), &counts.finished),
            // Gone before generation began.
            Ok(Err(e)) if job.events.is_closed() => (Event::Failed(e), &counts.cancelled),
            Ok(Err(e)) => (Event::Failed(e), &counts.failed),
            Err(panic) => {
                counts.stopped.store(true, Ordering::SeqCst);
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let e = Error::Invalid(format!(
                    "internal error ({why}); the model is unusable: restart the server"
                ));
                (Event::Failed(e), &counts.failed)
            }
        };
        // The place is free before the client hears the end, so its next request finds it.
        count.fetch_add(1, Ordering::SeqCst);
        counts.running.store(0, Ordering::SeqCst);
        counts.admitted.fetch_sub(1, Ordering::SeqCst);
        let _ = job.events.send(event);
        if counts.stopped.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// A fresh seed for a sampled request that names none (OpenAI's requests are not reproducible
/// without `seed`).
fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64's finalizer: neighbouring times give unrelated seeds.
    let mut z = nanos.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn run(model: &mut Model, base: &GenerateRequest, job: &Job) -> Result<Completion> {
    let events = &job.events;
    pollster::block_on(job.request.complete(
        model,
        base,
        fresh_seed(),
        || events.send(Event::Started).is_ok(),
        |text, kind| {
            let _ = events.send(Event::Text(text.to_string(), kind));
        },
        || !events.is_closed(),
    ))
}
