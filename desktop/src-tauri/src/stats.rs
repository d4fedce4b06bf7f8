//! Live resource figures for the detail views' charts: a container's CPU, memory, network
//! and block I/O from the engine's `/containers/{id}/stats` stream, and a machine's guest
//! CPU and memory with what its processes cost the host (the `machine` library's
//! [`rmachine_machine::usage`]). A stream lives while its view is open: the UI opens it
//! and closes it, and [`Stats::active`] counts the connections still held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::StatsOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use rmachine_machine::lifecycle::Lifecycle;
use rmachine_machine::state::State;
use rmachine_machine::usage::{self, GuestUsage, HostUsage};
use serde::Serialize;
use tauri::async_runtime::JoinHandle;

use crate::live::{ActiveCount, Sink};

/// How often a machine is sampled.
const MACHINE_PERIOD: Duration = Duration::from_secs(2);
/// How long the guest's probe may take.
const GUEST_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One point of a container's charts. Rates are per second since the previous point.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ContainerSample {
    /// When (Unix time, milliseconds).
    pub t_ms: u64,
    /// Percent of one CPU (a container busy on two CPUs shows 200, as `docker stats`).
    pub cpu_percent: f64,
    pub mem_bytes: u64,
    /// The container's memory limit (the machine's memory when it has none).
    pub mem_limit_bytes: u64,
    pub net_rx_bps: f64,
    pub net_tx_bps: f64,
    pub blk_read_bps: f64,
    pub blk_write_bps: f64,
}

/// What a container's stats stream tells the UI.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ContainerStatsEvent {
    Sample(ContainerSample),
    /// The stream ended: the container stopped, or the engine failed (the message says).
    Ended {
        message: String,
    },
}

/// One point of a machine's charts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MachineSample {
    pub t_ms: u64,
    /// The guest's CPU use, percent of one guest CPU; `None` until two probes were read.
    pub guest_cpu_percent: Option<f64>,
    pub guest_mem_used_bytes: Option<u64>,
    pub guest_mem_total_bytes: Option<u64>,
    /// Why the guest could not be read this time.
    pub guest_error: Option<String>,
    /// The CPU the machine's host processes used, percent of one host core.
    pub host_cpu_percent: Option<f64>,
    /// Resident memory of its host processes (VM, helpers, host agent), in bytes.
    pub host_rss_bytes: u64,
    /// Of which the VM process (rmachine-vmm or QEMU).
    pub vm_rss_bytes: Option<u64>,
}

/// What a machine's stream tells the UI.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MachineStatsEvent {
    Sample(MachineSample),
    Ended { message: String },
}

/// The open stats streams.
#[derive(Default)]
pub struct Stats {
    tasks: Mutex<HashMap<u64, JoinHandle<()>>>,
    next: AtomicU64,
    active: ActiveCount,
}

impl Stats {
    pub fn new() -> Stats {
        Stats::default()
    }

    /// Streams whose connection (or sampling loop) is still alive.
    pub fn active(&self) -> usize {
        self.active.get()
    }

    fn add(&self, task: JoinHandle<()>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut t) = self.tasks.lock() {
            t.retain(|_, t| !t.inner().is_finished());
            t.insert(id, task);
        }
        id
    }

    /// Follows container `id`'s stats.
    pub fn open_container(
        &self,
        docker: Docker,
        id: String,
        sink: Sink<ContainerStatsEvent>,
    ) -> u64 {
        let guard = self.active.guard();
        let task = tauri::async_runtime::spawn(async move {
            let _guard = guard;
            follow_container(docker, id, sink).await
        });
        self.add(task)
    }

    /// Samples machine `name` until it stops.
    pub fn open_machine(&self, lc: Lifecycle, name: String, sink: Sink<MachineStatsEvent>) -> u64 {
        let guard = self.active.guard();
        let task = tauri::async_runtime::spawn(async move {
            let _guard = guard;
            follow_machine(lc, name, sink).await
        });
        self.add(task)
    }

    /// Stops a stream (its connection closes at once).
    pub fn close(&self, stream: u64) {
        if let Ok(mut t) = self.tasks.lock() {
            if let Some(t) = t.remove(&stream) {
                t.abort();
            }
        }
    }
}

impl Drop for Stats {
    fn drop(&mut self) {
        if let Ok(t) = self.tasks.lock() {
            for t in t.values() {
                t.abort();
            }
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The cumulative counters of one engine stats document.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub net_rx: u64,
    pub net_tx: u64,
    pub blk_read: u64,
    pub blk_write: u64,
}

/// Turns one engine stats document into a chart point; `previous` (the last counters and
/// how long ago they were read) gives the rates.
pub fn container_sample(
    s: &ContainerStatsResponse,
    previous: Option<(Counters, Duration)>,
) -> (ContainerSample, Counters) {
    let cpu = s.cpu_stats.as_ref();
    let pre = s.precpu_stats.as_ref();
    let total = |c: Option<&bollard::models::ContainerCpuStats>| {
        c.and_then(|c| c.cpu_usage.as_ref()?.total_usage)
            .unwrap_or(0)
    };
    let system = |c: Option<&bollard::models::ContainerCpuStats>| {
        c.and_then(|c| c.system_cpu_usage).unwrap_or(0)
    };
    let cpu_delta = total(cpu).saturating_sub(total(pre)) as f64;
    let system_delta = system(cpu).saturating_sub(system(pre)) as f64;
    let cpus = cpu
        .and_then(|c| {
            c.online_cpus.or_else(|| {
                c.cpu_usage
                    .as_ref()?
                    .percpu_usage
                    .as_ref()
                    .map(|p| p.len() as u32)
            })
        })
        .unwrap_or(1)
        .max(1);
    // The docker CLI's formula: the container's share of all CPU time, times the CPUs.
    let cpu_percent = if system_delta > 0.0 && total(pre) > 0 {
        cpu_delta / system_delta * f64::from(cpus) * 100.0
    } else {
        0.0
    };
    let (mem_bytes, mem_limit_bytes) = s
        .memory_stats
        .as_ref()
        .map(|m| {
            let usage = m.usage.unwrap_or(0);
            // Page cache the kernel can drop is not use (the CLI subtracts it too).
            let cache = m
                .stats
                .as_ref()
                .and_then(|st| {
                    st.get("inactive_file")
                        .or_else(|| st.get("total_inactive_file"))
                })
                .copied()
                .unwrap_or(0);
            (usage.saturating_sub(cache), m.limit.unwrap_or(0))
        })
        .unwrap_or((0, 0));
    let (net_rx, net_tx) = s
        .networks
        .as_ref()
        .map(|n| {
            n.values().fold((0u64, 0u64), |(rx, tx), i| {
                (rx + i.rx_bytes.unwrap_or(0), tx + i.tx_bytes.unwrap_or(0))
            })
        })
        .unwrap_or((0, 0));
    let (blk_read, blk_write) = s
        .blkio_stats
        .as_ref()
        .and_then(|b| b.io_service_bytes_recursive.as_ref())
        .map(|entries| {
            entries.iter().fold((0u64, 0u64), |(r, w), e| {
                let v = e.value.unwrap_or(0);
                match e.op.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    Some("read") => (r + v, w),
                    Some("write") => (r, w + v),
                    _ => (r, w),
                }
            })
        })
        .unwrap_or((0, 0));
    let now = Counters {
        net_rx,
        net_tx,
        blk_read,
        blk_write,
    };
    let rate = |now: u64, before: u64, elapsed: Duration| {
        let s = elapsed.as_secs_f64();
        if s > 0.0 {
            now.saturating_sub(before) as f64 / s
        } else {
            0.0
        }
    };
    let mut sample = ContainerSample {
        t_ms: unix_ms(),
        cpu_percent,
        mem_bytes,
        mem_limit_bytes,
        ..ContainerSample::default()
    };
    if let Some((before, elapsed)) = previous {
        sample.net_rx_bps = rate(now.net_rx, before.net_rx, elapsed);
        sample.net_tx_bps = rate(now.net_tx, before.net_tx, elapsed);
        sample.blk_read_bps = rate(now.blk_read, before.blk_read, elapsed);
        sample.blk_write_bps = rate(now.blk_write, before.blk_write, elapsed);
    }
    (sample, now)
}

/// What a machine's data disk holds, as `docker system df` counts it, and what the disk
/// file takes on the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DiskUsage {
    pub images_bytes: u64,
    /// Containers' writable layers.
    pub containers_bytes: u64,
    pub volumes_bytes: u64,
    pub build_cache_bytes: u64,
    /// Blocks the sparse data disk file holds on the host (`None` where the host cannot
    /// say: Windows).
    pub disk_allocated_bytes: Option<u64>,
    /// The data disk's size (what the guest may fill).
    pub disk_size_bytes: u64,
}

/// The engine's `system df` of a running machine, with its data disk file's host cost.
pub async fn disk_usage(
    docker: &Docker,
    data_disk: &std::path::Path,
    disk_size_bytes: u64,
) -> Result<DiskUsage, bollard::errors::Error> {
    let df = docker
        .df(None::<bollard::query_parameters::DataUsageOptions>)
        .await?;
    let positive = |n: Option<i64>| n.filter(|&n| n > 0).unwrap_or(0) as u64;
    let images_bytes = df.layers_size.filter(|&n| n > 0).map_or_else(
        || {
            (df.images.iter().flatten())
                .map(|i| positive(Some(i.size)))
                .sum()
        },
        |n| n as u64,
    );
    let containers_bytes = (df.containers.iter().flatten())
        .map(|c| positive(c.size_rw))
        .sum();
    let volumes_bytes = (df.volumes.iter().flatten())
        .map(|v| positive(v.usage_data.as_ref().map(|u| u.size)))
        .sum();
    let build_cache_bytes = (df.build_cache.iter().flatten())
        .map(|b| positive(b.size))
        .sum();
    Ok(DiskUsage {
        images_bytes,
        containers_bytes,
        volumes_bytes,
        build_cache_bytes,
        disk_allocated_bytes: allocated_bytes(data_disk),
        disk_size_bytes,
    })
}

/// The bytes a (sparse) file really holds on the host.
#[cfg(unix)]
fn allocated_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.blocks() * 512)
}

#[cfg(not(unix))]
fn allocated_bytes(_path: &std::path::Path) -> Option<u64> {
    None
}

/// One running container's CPU and memory now, for the list's summary column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerUsage {
    pub id: String,
    /// Percent of one CPU over the engine's last second (as `docker stats`).
    pub cpu_percent: f64,
    pub mem_bytes: u64,
    pub mem_limit_bytes: u64,
}

/// The CPU and memory of every running container: one stats document each (the engine
/// measures CPU over a second of its own before it answers), asked for all at once. A
/// container that stops meanwhile, or whose stats fail, is left out: the list shows `–`.
pub async fn containers_usage(
    docker: &Docker,
) -> Result<Vec<ContainerUsage>, bollard::errors::Error> {
    let running = docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::new().build(),
        ))
        .await?;
    let asks = running
        .into_iter()
        .filter_map(|c| c.id)
        .map(|id| async move {
            let options = StatsOptionsBuilder::new()
                .stream(false)
                .one_shot(false)
                .build();
            let first = docker.stats(&id, Some(options)).next().await;
            match first {
                Some(Ok(s)) if s.precpu_stats.is_some() => {
                    let (sample, _) = container_sample(&s, None);
                    Some(ContainerUsage {
                        id,
                        cpu_percent: sample.cpu_percent,
                        mem_bytes: sample.mem_bytes,
                        mem_limit_bytes: sample.mem_limit_bytes,
                    })
                }
                _ => None,
            }
        });
    Ok(futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect())
}

async fn follow_container(docker: Docker, id: String, sink: Sink<ContainerStatsEvent>) {
    let options = StatsOptionsBuilder::new().stream(true).build();
    let mut stream = docker.stats(&id, Some(options));
    let mut previous: Option<(Counters, Instant)> = None;
    let message = loop {
        match stream.next().await {
            Some(Ok(s)) => {
                // The engine sends a stopped container's stream documents with only its
                // name and id (no system CPU time): it is over.
                if s.cpu_stats
                    .as_ref()
                    .and_then(|c| c.system_cpu_usage)
                    .unwrap_or(0)
                    == 0
                {
                    break "the container is not running".to_string();
                }
                let (sample, counters) =
                    container_sample(&s, previous.map(|(c, at)| (c, at.elapsed())));
                previous = Some((counters, Instant::now()));
                sink(ContainerStatsEvent::Sample(sample));
            }
            Some(Err(e)) => {
                break format!(
                    "the engine's stats stream failed: {}",
                    crate::error::CommandError::from(e).message
                )
            }
            None => break "the container stopped".to_string(),
        }
    };
    sink(ContainerStatsEvent::Ended { message });
}

async fn follow_machine(lc: Lifecycle, name: String, sink: Sink<MachineStatsEvent>) {
    let mut previous_guest: Option<GuestUsage> = None;
    let mut previous_host: Option<(HostUsage, Instant)> = None;
    let mut tick = tokio::time::interval(MACHINE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = lc.store().clone();
        let n = name.clone();
        let loaded = tauri::async_runtime::spawn_blocking(move || {
            let m = store.load(&n)?;
            let host = usage::host_usage(&m.state);
            Ok::<_, rmachine_machine::store::StoreError>((m, host))
        })
        .await;
        let (machine, host) = match loaded {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                sink(MachineStatsEvent::Ended {
                    message: rmachine_machine::lifecycle::error_chain(&e),
                });
                return;
            }
            Err(e) => {
                sink(MachineStatsEvent::Ended {
                    message: format!("the sampling thread failed: {e}"),
                });
                return;
            }
        };
        if machine.state.state != State::Running {
            sink(MachineStatsEvent::Ended {
                message: format!("machine {name} is {}", machine.state.state.name()),
            });
            return;
        }
        let now = Instant::now();
        let mut sample = MachineSample {
            t_ms: unix_ms(),
            host_rss_bytes: host.total().rss_bytes,
            vm_rss_bytes: host.vm.map(|v| v.rss_bytes),
            host_cpu_percent: previous_host.map(|(before, at)| {
                host.cpu_percent_since(&before, now.duration_since(at).as_millis() as u64)
            }),
            ..MachineSample::default()
        };
        previous_host = Some((host, now));
        // An ssh machine has no agent: only the host side is known.
        if machine.spec.ssh.is_none() {
            let guest = match machine.running_carrier() {
                Ok(carrier) => {
                    match tokio::time::timeout(GUEST_PROBE_TIMEOUT, usage::guest_usage(&carrier))
                        .await
                    {
                        Ok(Ok(g)) => Ok(g),
                        Ok(Err(e)) => Err(rmachine_machine::lifecycle::error_chain(&e)),
                        Err(_) => Err("the guest did not answer in 5 s".to_string()),
                    }
                }
                Err(e) => Err(rmachine_machine::lifecycle::error_chain(&e)),
            };
            match guest {
                Ok(g) => {
                    sample.guest_cpu_percent = previous_guest.map(|p| g.cpu_percent_since(&p));
                    sample.guest_mem_used_bytes = Some(g.mem_used_kib() * 1024);
                    sample.guest_mem_total_bytes = Some(g.mem_total_kib * 1024);
                    previous_guest = Some(g);
                }
                Err(e) => sample.guest_error = Some(e),
            }
        }
        sink(MachineStatsEvent::Sample(sample));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(json: &str) -> ContainerStatsResponse {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn test_container_sample_follows_the_cli_formulas() {
        let s = stats(
            r#"{
            "read": "2025-01-01T00:00:01Z",
            "cpu_stats": {"cpu_usage": {"total_usage": 3000000000}, "system_cpu_usage": 20000000000, "online_cpus": 2},
            "precpu_stats": {"cpu_usage": {"total_usage": 2000000000}, "system_cpu_usage": 18000000000, "online_cpus": 2},
            "memory_stats": {"usage": 50000000, "limit": 2000000000, "stats": {"inactive_file": 10000000}},
            "networks": {"eth0": {"rx_bytes": 3000, "tx_bytes": 1000}, "eth1": {"rx_bytes": 1000, "tx_bytes": 0}},
            "blkio_stats": {"io_service_bytes_recursive": [
                {"major": 8, "minor": 0, "op": "read", "value": 4096},
                {"major": 8, "minor": 0, "op": "write", "value": 8192}]}
        }"#,
        );
        let (first, counters) = container_sample(&s, None);
        // 1 s of CPU out of 2 s of system time on 2 CPUs: one CPU busy.
        assert!((first.cpu_percent - 100.0).abs() < 1e-9, "{first:?}");
        assert_eq!(
            (first.mem_bytes, first.mem_limit_bytes),
            (40_000_000, 2_000_000_000)
        );
        assert_eq!(first.net_rx_bps, 0.0, "no rate without a previous point");
        assert_eq!(
            counters,
            Counters {
                net_rx: 4000,
                net_tx: 1000,
                blk_read: 4096,
                blk_write: 8192
            }
        );
        let before = Counters {
            net_rx: 2000,
            net_tx: 1000,
            blk_read: 0,
            blk_write: 4096,
        };
        let (second, _) = container_sample(&s, Some((before, Duration::from_secs(2))));
        assert_eq!(
            (
                second.net_rx_bps,
                second.net_tx_bps,
                second.blk_read_bps,
                second.blk_write_bps
            ),
            (1000.0, 0.0, 2048.0, 2048.0)
        );
    }

    #[test]
    fn test_first_and_empty_documents_give_zero_not_nonsense() {
        // The first document of a stream has no previous CPU reading.
        let s = stats(
            r#"{"cpu_stats": {"cpu_usage": {"total_usage": 5}, "system_cpu_usage": 10}, "precpu_stats": {}}"#,
        );
        let (sample, _) = container_sample(&s, None);
        assert_eq!(sample.cpu_percent, 0.0);
        let (sample, _) = container_sample(&stats("{}"), None);
        assert_eq!((sample.cpu_percent, sample.mem_bytes), (0.0, 0));
    }
}
