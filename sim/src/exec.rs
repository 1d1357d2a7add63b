//! A deterministic single-threaded executor with a simulated clock. Tasks that are ready run in
//! an order drawn from the seeded random source; when none is ready, the clock jumps to the
//! next timer. So one seed gives one interleaving, replayed exactly, and a simulated hour of
//! timeouts takes no wall time.

use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;
use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

type BoxFuture = Pin<Box<dyn Future<Output = ()>>>;

struct Task {
    name: String,
    future: Option<BoxFuture>,
}

struct TaskWaker {
    id: usize,
    woken: Arc<Mutex<Vec<usize>>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.lock().unwrap_or_else(|e| e.into_inner()).push(self.id);
    }
}

struct Shared {
    /// Simulated time since the start, in microseconds.
    now: Cell<u64>,
    timer_seq: Cell<u64>,
    timers: RefCell<BinaryHeap<Reverse<(u64, u64)>>>,
    timer_wakers: RefCell<std::collections::HashMap<u64, Waker>>,
    woken: Arc<Mutex<Vec<usize>>>,
    tasks: RefCell<Vec<Task>>,
    rng: RefCell<XorShiftRng>,
    /// Task polls so far: the "step" a failure is reported at.
    steps: Cell<u64>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Shared>>> = const { RefCell::new(None) };
    static TRACE: Cell<bool> = const { Cell::new(false) };
}

/// Prints what a run does, step by step (`--trace`).
pub fn set_trace(on: bool) {
    TRACE.with(|t| t.set(on));
}

/// One line of the trace, when tracing.
pub fn trace(what: impl FnOnce() -> String) {
    if TRACE.with(|t| t.get()) {
        println!("{:>12.6?} {:>7} {}", now(), steps(), what());
    }
}

fn current() -> Rc<Shared> {
    CURRENT.with(|c| c.borrow().clone()).expect("called outside a simulation")
}

/// Simulated time since the start.
pub fn now() -> Duration {
    Duration::from_micros(current().now.get())
}

/// Task polls so far in this run.
pub fn steps() -> u64 {
    CURRENT.with(|c| c.borrow().as_ref().map_or(0, |s| s.steps.get()))
}

/// A number drawn from the run's one random source.
pub fn random_range(range: std::ops::Range<u64>) -> u64 {
    current().rng.borrow_mut().random_range(range)
}

/// True with probability `p`.
pub fn chance(p: f64) -> bool {
    current().rng.borrow_mut().random_bool(p.clamp(0.0, 1.0))
}

/// Random bytes from the run's source.
pub fn fill(buf: &mut [u8]) {
    let shared = current();
    let mut rng = shared.rng.borrow_mut();
    for b in buf {
        *b = rng.random_range(0..=255u8);
    }
}

/// Completes once the simulated clock has moved on by `d`.
pub fn sleep(d: Duration) -> Sleep {
    Sleep { deadline: current().now.get() + d.as_micros() as u64, registered: None }
}

pub struct Sleep {
    deadline: u64,
    registered: Option<u64>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let shared = current();
        if shared.now.get() >= self.deadline {
            if let Some(seq) = self.registered.take() {
                shared.timer_wakers.borrow_mut().remove(&seq);
            }
            return Poll::Ready(());
        }
        let seq = match self.registered {
            Some(seq) => seq,
            None => {
                let seq = shared.timer_seq.get();
                shared.timer_seq.set(seq + 1);
                shared.timers.borrow_mut().push(Reverse((self.deadline, seq)));
                self.registered = Some(seq);
                seq
            }
        };
        shared.timer_wakers.borrow_mut().insert(seq, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(seq) = self.registered {
            CURRENT.with(|c| {
                if let Some(s) = c.borrow().as_ref() {
                    s.timer_wakers.borrow_mut().remove(&seq);
                }
            });
        }
    }
}

/// Gives every other ready task a chance to run first: what another thread of the real engine
/// may do between two steps of this one. Mostly a few microseconds; now and then a few
/// milliseconds (a metadata read from a cold page, a thread descheduled).
pub async fn yield_now() {
    let us = if chance(0.05) { random_range(1_000..10_000) } else { random_range(0..20) };
    sleep(Duration::from_micros(us)).await
}

/// The result of a spawned task.
pub struct JoinHandle<T>(Rc<RefCell<(Option<T>, Option<Waker>)>>);

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = self.0.borrow_mut();
        match slot.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                slot.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Starts `future` as a task of its own.
pub fn spawn<T: 'static>(name: impl Into<String>, future: impl Future<Output = T> + 'static) -> JoinHandle<T> {
    let shared = current();
    let slot: Rc<RefCell<(Option<T>, Option<Waker>)>> = Rc::new(RefCell::new((None, None)));
    let out = slot.clone();
    let task = async move {
        let v = future.await;
        let waker = {
            let mut s = out.borrow_mut();
            s.0 = Some(v);
            s.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    };
    let mut tasks = shared.tasks.borrow_mut();
    let id = tasks.len();
    tasks.push(Task { name: name.into(), future: Some(Box::pin(task)) });
    shared.woken.lock().unwrap_or_else(|e| e.into_inner()).push(id);
    JoinHandle(slot)
}

/// A task that can be stopped: [`Abortable::abort`] drops its future at once, and the handle
/// then completes.
pub struct Abortable {
    id: usize,
    done: JoinHandle<()>,
}

/// Starts `future` as a task that can be aborted.
pub fn spawn_abortable(name: impl Into<String>, future: impl Future<Output = ()> + 'static) -> Abortable {
    let id = current().tasks.borrow().len();
    let done = spawn(name, future);
    Abortable { id, done }
}

impl Abortable {
    pub fn abort(&self) {
        let shared = current();
        let future = shared.tasks.borrow_mut().get_mut(self.id).and_then(|t| t.future.take());
        if future.is_some() {
            drop(future);
            let waker = {
                let mut slot = self.done.0.borrow_mut();
                slot.0 = Some(());
                slot.1.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl Future for Abortable {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.done).poll(cx)
    }
}

/// Awaits every handle, in order.
pub async fn join_all<T>(handles: Vec<JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    out
}

pub struct Elapsed;

/// `future`, or Err once `d` has passed on the simulated clock.
pub async fn timeout<T>(d: Duration, future: impl Future<Output = T>) -> Result<T, Elapsed> {
    let mut future = std::pin::pin!(future);
    let mut timer = std::pin::pin!(sleep(d));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// How a run ended when its main task did not finish.
#[derive(Debug)]
pub enum Stuck {
    /// Nothing ready and no timer set: every task waits for something that will never come.
    Deadlock { waiting: Vec<String> },
    /// The main task had not finished when the simulated clock reached the limit.
    OutOfTime { limit: Duration, waiting: Vec<String> },
}

/// Runs `main` and every task it spawns until `main` finishes, with the random source seeded by
/// `seed`. Tasks still running when `main` finishes are dropped.
pub fn run<T: 'static>(seed: u64, limit: Duration, main: impl Future<Output = T> + 'static) -> Result<T, Stuck> {
    let shared = Rc::new(Shared {
        now: Cell::new(0),
        timer_seq: Cell::new(0),
        timers: RefCell::new(BinaryHeap::new()),
        timer_wakers: RefCell::new(Default::default()),
        woken: Arc::new(Mutex::new(Vec::new())),
        tasks: RefCell::new(Vec::new()),
        rng: RefCell::new(XorShiftRng::seed_from_u64(seed)),
        steps: Cell::new(0),
    });
    CURRENT.with(|c| *c.borrow_mut() = Some(shared.clone()));
    let _reset = Reset;
    let main = spawn("main", main);
    let result = loop {
        if let Some(v) = main.0.borrow_mut().0.take() {
            break Ok(v);
        }
        let mut woken: Vec<usize> = std::mem::take(&mut *shared.woken.lock().unwrap_or_else(|e| e.into_inner()));
        woken.sort_unstable();
        woken.dedup();
        if !woken.is_empty() {
            // A random order among the ready tasks: the scheduling the seed chooses.
            for i in (1..woken.len()).rev() {
                let j = shared.rng.borrow_mut().random_range(0..=i);
                woken.swap(i, j);
            }
            for id in woken {
                poll_task(&shared, id);
            }
            continue;
        }
        let next = shared.timers.borrow_mut().pop();
        match next {
            Some(Reverse((deadline, seq))) => {
                if deadline > limit.as_micros() as u64 {
                    break Err(Stuck::OutOfTime { limit, waiting: waiting(&shared) });
                }
                shared.now.set(shared.now.get().max(deadline));
                if let Some(w) = shared.timer_wakers.borrow_mut().remove(&seq) {
                    w.wake();
                }
            }
            None => break Err(Stuck::Deadlock { waiting: waiting(&shared) }),
        }
    };
    // Drop the tasks left (background loops) while the executor is still current: their
    // timers unregister themselves.
    let left: Vec<Task> = std::mem::take(&mut *shared.tasks.borrow_mut());
    drop(left);
    result
}

struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

fn waiting(shared: &Shared) -> Vec<String> {
    shared.tasks.borrow().iter().filter(|t| t.future.is_some()).map(|t| t.name.clone()).collect()
}

fn poll_task(shared: &Rc<Shared>, id: usize) {
    let Some(mut future) = shared.tasks.borrow_mut().get_mut(id).and_then(|t| t.future.take()) else { return };
    shared.steps.set(shared.steps.get() + 1);
    let waker = Waker::from(Arc::new(TaskWaker { id, woken: shared.woken.clone() }));
    let mut cx = Context::from_waker(&waker);
    if future.as_mut().poll(&mut cx).is_pending() {
        shared.tasks.borrow_mut()[id].future = Some(future);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_interleaving() {
        let order = |seed| {
            run(seed, Duration::from_secs(10), async {
                let log = Rc::new(RefCell::new(Vec::new()));
                let handles = (0..8)
                    .map(|i| {
                        let log = log.clone();
                        spawn(format!("t{i}"), async move {
                            yield_now().await;
                            log.borrow_mut().push(i);
                        })
                    })
                    .collect();
                join_all(handles).await;
                let v = log.borrow().clone();
                v
            })
            .unwrap_or_else(|stuck| panic!("{stuck:?}"))
        };
        assert_eq!(order(1), order(1));
        assert!((2..20).any(|s| order(s) != order(1)), "seeds choose interleavings");
    }

    #[test]
    fn sleeping_takes_simulated_time_only_and_timeouts_fire() {
        let (t, r) = run(3, Duration::from_secs(7200), async {
            sleep(Duration::from_secs(3600)).await;
            let r = timeout(Duration::from_secs(1), sleep(Duration::from_secs(5))).await.is_err();
            (now(), r)
        })
        .unwrap_or_else(|stuck| panic!("{stuck:?}"));
        assert_eq!(t, Duration::from_secs(3601));
        assert!(r);
    }

    #[test]
    fn a_task_waiting_for_nothing_is_reported_as_a_deadlock() {
        let r = run(1, Duration::from_secs(1), async {
            let never: JoinHandle<()> = JoinHandle(Rc::new(RefCell::new((None, None))));
            never.await
        });
        assert!(matches!(r, Err(Stuck::Deadlock { waiting }) if waiting == ["main"]));
    }
}
