//! The event loop: it only waits for what comes next (a signal, the watch tick, a client
//! of the control socket or of the metrics, a ring buffer with records) and hands it to
//! the agent.

use std::{path::Path, time::Duration};

use agent_common::maps as map_names;
use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::{AsyncFd, AsyncFdReadyMutGuard},
    net::{TcpListener, UnixListener},
};

use crate::{events, loader::Guard, report::http};

use super::{agent::Agent, control, notify};

/// How often the policy files are looked at for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Events handled before the loop looks at signals, reloads and status again.
const EVENT_BATCH: usize = 1024;
/// A metrics client that does not talk or read must not hold up the agent.
const METRICS_CLIENT_TIME_LIMIT: Duration = Duration::from_secs(1);

pub(super) async fn event_loop(
    agent: &mut Agent,
    status_socket: &Path,
    metrics_addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut events = polled_ring(&mut agent.guard, map_names::CLOCK_EVENTS)?;
    let mut net_events = polled_ring(&mut agent.guard, map_names::NET_EVENTS)?;
    let mut tamper_events = polled_ring(&mut agent.guard, map_names::TAMPER_EVENTS)?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut watch = tokio::time::interval(WATCH_INTERVAL);
    // Status is a convenience: without the socket, enforcement goes on.
    let status = match control::bind(status_socket) {
        Ok(l) => Some(l),
        Err(e) => {
            log::warn!("timeguard status will not answer: {e:#}");
            None
        }
    };
    let metrics = match metrics_addr {
        Some(addr) => bind_metrics(addr).await,
        None => None,
    };
    // Ready only now: the policy is live, and a stop (SIGTERM) or `timeguard status` sent
    // from here on is answered.
    notify::ready(agent);
    // Fed from this loop, not a thread of its own: a wedged loop starves the watchdog and
    // systemd restarts the agent.
    let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
    loop {
        tokio::select! {
            _ = tick(watchdog.as_mut()) => notify::watchdog(),
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => agent.reload_by_operator("SIGHUP"),
            _ = watch.tick() => {
                if let Err(e) = agent.guard.clock.refresh_state() {
                    log::warn!("refreshing the TAI offset for step limits: {e:#}");
                }
                agent.follow_kernel_policy();
                agent.follow_changes();
                agent.follow_ptp_interfaces_now();
            }
            conn = accept(status.as_ref()) => {
                if let Ok((stream, _)) = conn {
                    if agent.control(stream).await {
                        break;
                    }
                }
            }
            conn = accept(metrics.as_ref()) => {
                if let Ok((stream, _)) = conn {
                    serve_metrics(agent, stream).await;
                }
            }
            ready = events.readable_mut() => {
                let mut ready = ready.context("waiting for events")?;
                let drained = take_records(agent, ready.get_inner_mut(), "event", Agent::clock_event);
                settle(ready, drained).await;
            }
            // Packet records come on their own ring: a packet flood cannot crowd out a
            // clock event, and the loop turns between the two.
            ready = net_events.readable_mut() => {
                let mut ready = ready.context("waiting for packet events")?;
                let drained = take_records(agent, ready.get_inner_mut(), "packet", Agent::net_event);
                settle(ready, drained).await;
            }
            // Tamper records too: attempts on the guard itself.
            ready = tamper_events.readable_mut() => {
                let mut ready = ready.context("waiting for tamper events")?;
                let drained = take_records(agent, ready.get_inner_mut(), "tamper", Agent::tamper_event);
                settle(ready, drained).await;
            }
        }
    }
    notify::stopping();
    Ok(())
}

/// The next tick of an interval; never, without one.
async fn tick(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Metrics are a convenience too; a port already taken is reported, not fatal.
async fn bind_metrics(addr: std::net::SocketAddr) -> Option<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => {
            log::info!("metrics: http://{addr}/metrics");
            Some(l)
        }
        Err(e) => {
            log::warn!("metrics will not be served on {addr}: {e}");
            None
        }
    }
}

/// Answers one metrics client.
async fn serve_metrics(agent: &mut Agent, mut stream: tokio::net::TcpStream) {
    let text = agent.metrics_text();
    let served = http::serve_one(&mut stream, |path| match (path, &text) {
        ("/metrics", Ok(t)) => Some(t.clone()),
        _ => None,
    });
    let _ = tokio::time::timeout(METRICS_CLIENT_TIME_LIMIT, served).await;
    if let Err(e) = text {
        log::warn!("metrics: {e:#}");
    }
}

/// A ring buffer of the kernel's records, taken from the programs and watched by the event
/// loop.
fn polled_ring(guard: &mut Guard, name: &str) -> anyhow::Result<AsyncFd<RingBuf<MapData>>> {
    let ring = guard.take_ring(name)?;
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged while the
    // AsyncFd owns it.
    unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer {name}: {e}"))
}

/// Hands up to `EVENT_BATCH` records of a ring to `each`; whether the ring is now empty. A
/// bounded batch per turn: under a flood a ring refills as fast as it is read, and signals,
/// reloads and status must still get their turn.
fn drain(ring: &mut RingBuf<MapData>, mut each: impl FnMut(&[u8])) -> bool {
    for _ in 0..EVENT_BATCH {
        let Some(item) = ring.next() else {
            return true;
        };
        each(&item);
    }
    false
}

/// Hands the records of a ring to the agent's `handle`, one batch with the trail's records
/// held back; whether the ring is now empty.
fn take_records<T: aya::Pod>(
    agent: &mut Agent,
    ring: &mut RingBuf<MapData>,
    what: &str,
    handle: fn(&mut Agent, &T),
) -> bool {
    agent.batched(|agent| {
        drain(ring, |item| match events::parse::<T>(item) {
            Some(ev) => handle(agent, &ev),
            None => log::warn!("dropped a malformed {what} record of {} bytes", item.len()),
        })
    })
}

/// Waits for the next wakeup when the ring is empty; otherwise yields and reads on.
async fn settle(mut ready: AsyncFdReadyMutGuard<'_, RingBuf<MapData>>, drained: bool) {
    if drained {
        ready.clear_ready();
    } else {
        drop(ready);
        tokio::task::yield_now().await;
    }
}

/// A listener the loop accepts clients on: the control socket or the metrics port.
trait Accept {
    type Stream;
    type Addr;
    async fn accept_one(&self) -> std::io::Result<(Self::Stream, Self::Addr)>;
}

impl Accept for UnixListener {
    type Stream = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;
    async fn accept_one(&self) -> std::io::Result<(Self::Stream, Self::Addr)> {
        self.accept().await
    }
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;
    async fn accept_one(&self) -> std::io::Result<(Self::Stream, Self::Addr)> {
        self.accept().await
    }
}

/// The next client; never, when there is no listener.
async fn accept<L: Accept>(listener: Option<&L>) -> std::io::Result<(L::Stream, L::Addr)> {
    match listener {
        Some(l) => l.accept_one().await,
        None => std::future::pending().await,
    }
}
