//! The tokio runtime driven from the JS thread's own event loop.
//!
//! With a worker thread, every round trip crossed two threads: JS woke the
//! parked worker to write a publish, and the worker woke JS to deliver its
//! ack, each wake an inter-processor interrupt on a VM. Here the runtime is a
//! current-thread one that the JS thread runs itself: libuv watches the
//! runtime's epoll descriptor and runs the runtime whenever it has I/O or a
//! wake from outside, and a timer covers tokio's timers (the runtime does
//! not say when its next timer is due): every 10 ms while there is I/O or
//! our tasks run, backing off to 100 ms when there is none.

use std::collections::HashSet;
use std::future::Future;
use std::os::raw::{c_int, c_void};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use napi::Env;

type Callback = extern "C" fn(*mut c_void);
type PollCallback = extern "C" fn(*mut c_void, c_int, c_int);
type HandleFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type LoopHandleFn = unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int;

/// The libuv functions, found in the running Node at load time rather than
/// linked: a test binary or another host has none, and then the runtime
/// gets a worker instead.
struct Uv {
    handle_size: unsafe extern "C" fn(c_int) -> usize,
    default_loop: unsafe extern "C" fn() -> *mut c_void,
    poll_init: unsafe extern "C" fn(*mut c_void, *mut c_void, c_int) -> c_int,
    poll_start: unsafe extern "C" fn(*mut c_void, c_int, PollCallback) -> c_int,
    poll_stop: HandleFn,
    timer_init: LoopHandleFn,
    timer_start: unsafe extern "C" fn(*mut c_void, Callback, u64, u64) -> c_int,
    timer_stop: HandleFn,
    unref: unsafe extern "C" fn(*mut c_void),
}

static UV: OnceLock<Option<Uv>> = OnceLock::new();

fn uv() -> Option<&'static Uv> {
    /// A symbol already loaded into the process (Node exports libuv's).
    macro_rules! find {
        ($name:literal as $ty:ty) => {{
            // SAFETY: a lookup; the symbol has the signature uv.h declares.
            let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, $name.as_ptr()) };
            if symbol.is_null() {
                return None;
            }
            unsafe { std::mem::transmute::<*mut c_void, $ty>(symbol) }
        }};
    }
    UV.get_or_init(|| {
        Some(Uv {
            handle_size: find!(c"uv_handle_size" as unsafe extern "C" fn(c_int) -> usize),
            default_loop: find!(c"uv_default_loop" as unsafe extern "C" fn() -> *mut c_void),
            poll_init: find!(
                c"uv_poll_init" as unsafe extern "C" fn(*mut c_void, *mut c_void, c_int) -> c_int
            ),
            poll_start: find!(
                c"uv_poll_start" as unsafe extern "C" fn(*mut c_void, c_int, PollCallback) -> c_int
            ),
            poll_stop: find!(c"uv_poll_stop" as HandleFn),
            timer_init: find!(c"uv_timer_init" as LoopHandleFn),
            timer_start: find!(
                c"uv_timer_start" as unsafe extern "C" fn(*mut c_void, Callback, u64, u64) -> c_int
            ),
            timer_stop: find!(c"uv_timer_stop" as HandleFn),
            unref: find!(c"uv_unref" as unsafe extern "C" fn(*mut c_void)),
        })
    })
    .as_ref()
}

// From uv.h's handle type map and poll events.
const UV_POLL: c_int = 8;
const UV_TIMER: c_int = 13;
const UV_READABLE: c_int = 1;
/// The tick while the runtime has I/O or our tasks ran; otherwise it
/// doubles up to the cap, so an idle connection costs ten wakes a second,
/// not a hundred, and a timer that fires after a quiet spell is late by the
/// cap at most.
const TICK_MS: u64 = 10;
const IDLE_TICK_MS: u64 = 100;

/// The poll and timer handles on the default loop.
static HANDLES: OnceLock<[usize; 2]> = OnceLock::new();
static EPOLL_FD: AtomicI32 = AtomicI32::new(-1);
static STOPPED: AtomicBool = AtomicBool::new(false);
static TICK: AtomicU64 = AtomicU64::new(TICK_MS);
static HAD_IO: AtomicBool = AtomicBool::new(false);
static RAN: AtomicBool = AtomicBool::new(false);
static DRIVING: AtomicBool = AtomicBool::new(false);
static IDLE: AtomicBool = AtomicBool::new(false);
static IDLE_WAKER: AtomicWaker = AtomicWaker::new();

fn epoll_fds() -> HashSet<i32> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .map(|target| target.as_os_str() == "anon_inode:[eventpoll]")
                .unwrap_or(false)
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// The runtime for the main thread's loop to drive, when the addon loads
/// on Node's main thread (where the default loop runs) and the runtime's
/// epoll descriptor can be found; `None` sends the caller to a worker.
pub fn on_main_loop() -> Option<tokio::runtime::Runtime> {
    let is_main_thread = std::fs::read_link("/proc/thread-self")
        .ok()
        .is_some_and(|path| {
            path == std::path::Path::new(&format!("{0}/task/{0}", std::process::id()))
        });
    if !is_main_thread {
        return None;
    }
    let uv = uv()?;
    let before = epoll_fds();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(on_park)
        .build()
        .ok()?;
    // mio keeps a duplicate of the descriptor for its registry: two new
    // descriptors, one epoll instance.
    let mut created: Vec<i32> = epoll_fds().difference(&before).copied().collect();
    created.sort_unstable();
    let fd = match created.as_slice() {
        [fd] | [fd, _] => *fd,
        _ => return None,
    };
    EPOLL_FD.store(fd, Ordering::Release);
    // SAFETY: on the loop's own thread; the handles are leaked, so they
    // outlive the loop, and libuv sizes them itself.
    unsafe {
        let event_loop = (uv.default_loop)();
        let poll = handle(uv, UV_POLL);
        let timer = handle(uv, UV_TIMER);
        if (uv.poll_init)(event_loop, poll, fd) != 0
            || (uv.poll_start)(poll, UV_READABLE, on_readable) != 0
        {
            return None;
        }
        if (uv.timer_init)(event_loop, timer) != 0
            || (uv.timer_start)(timer, on_tick, TICK_MS, TICK_MS) != 0
        {
            // `drive` does nothing until the handles are recorded, so the
            // worker runtime the caller builds instead is never driven here.
            (uv.poll_stop)(poll);
            return None;
        }
        // Open connections keep Node alive through their threadsafe
        // functions, not through these.
        (uv.unref)(poll);
        (uv.unref)(timer);
        HANDLES.set([poll as usize, timer as usize]).ok()?;
    }
    Some(runtime)
}

/// Stops driving when the main env is torn down: napi shuts the runtime
/// down in its own cleanup hook, and the loop may turn again after it.
#[napi_derive::napi(module_exports)]
pub fn on_env(_exports: napi::bindgen_prelude::Object, env: Env) -> napi::Result<()> {
    let (Some(&[poll, timer]), Some(uv)) = (HANDLES.get(), uv()) else {
        return Ok(());
    };
    // SAFETY: a plain query of the env's loop.
    if env.get_uv_event_loop()? != unsafe { (uv.default_loop)() }.cast() {
        return Ok(());
    }
    env.add_env_cleanup_hook((), move |()| {
        STOPPED.store(true, Ordering::Release);
        // SAFETY: the handles were started on this loop, which is this thread's.
        unsafe {
            (uv.poll_stop)(poll as *mut c_void);
            (uv.timer_stop)(timer as *mut c_void);
        }
    })?;
    Ok(())
}

fn handle(uv: &Uv, kind: c_int) -> *mut c_void {
    // SAFETY: plain size query.
    let size = unsafe { (uv.handle_size)(kind) };
    let words = size.div_ceil(8);
    Box::leak(vec![0u64; words].into_boxed_slice())
        .as_mut_ptr()
        .cast()
}

extern "C" fn on_readable(_: *mut c_void, _: c_int, _: c_int) {
    HAD_IO.store(true, Ordering::Relaxed);
    if TICK.swap(TICK_MS, Ordering::Relaxed) != TICK_MS {
        if let (Some(&[_, timer]), Some(uv)) = (HANDLES.get(), uv()) {
            // SAFETY: the timer lives on this loop, which is this thread's.
            unsafe { (uv.timer_start)(timer as *mut c_void, on_tick, TICK_MS, TICK_MS) };
        }
    }
    drive();
}

extern "C" fn on_tick(timer: *mut c_void) {
    drive();
    let busy = HAD_IO.swap(false, Ordering::Relaxed) | RAN.swap(false, Ordering::Relaxed);
    let tick = TICK.load(Ordering::Relaxed);
    let next = if busy {
        TICK_MS
    } else {
        (tick * 2).min(IDLE_TICK_MS)
    };
    if next != tick {
        TICK.store(next, Ordering::Relaxed);
        if let Some(uv) = uv() {
            // SAFETY: as in `on_readable`.
            unsafe { (uv.timer_start)(timer, on_tick, next, next) };
        }
    }
}

/// Wraps our own tasks, whose timers (publish resends and timeouts, pings,
/// liveness checks) keep the tick fast while they run.
pub async fn counted<F: Future>(task: F) -> F::Output {
    let mut task = std::pin::pin!(task);
    std::future::poll_fn(|cx| {
        RAN.store(true, Ordering::Relaxed);
        task.as_mut().poll(cx)
    })
    .await
}

/// Runs the runtime until nothing in it can make progress without waiting.
/// Also called by `publishPacked` when JS wants the publishes written
/// before the call returns (a long synchronous burst of publishes would
/// otherwise reach the loop's next turn only at its end).
pub fn drive() {
    if HANDLES.get().is_none()
        || STOPPED.load(Ordering::Acquire)
        || DRIVING.swap(true, Ordering::AcqRel)
    {
        return;
    }
    let _ = std::panic::catch_unwind(|| napi::bindgen_prelude::block_on(UntilIdle));
    DRIVING.store(false, Ordering::Release);
}

/// Runs where the runtime would park. The drive must not block, so the
/// `UntilIdle` future is always woken, which makes the park a non-blocking
/// poll of the driver; whatever that poll wakes stays queued after the
/// drive returns, so the drive only ends when the epoll descriptor had
/// nothing ready just before it. (An event landing between this check and
/// that poll waits for the next tick at most.)
fn on_park() {
    let mut pollfd = libc::pollfd {
        fd: EPOLL_FD.load(Ordering::Acquire),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; poll on an epoll descriptor reports whether
    // it has ready events without taking them.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) } > 0;
    IDLE.store(!ready, Ordering::Release);
    IDLE_WAKER.wake();
}

/// Ready once the runtime parks with nothing ready (see `on_park`).
struct UntilIdle;

impl Future for UntilIdle {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        IDLE_WAKER.register(cx.waker());
        if IDLE.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}
