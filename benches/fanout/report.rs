//! The report of a `fanout` run and the figures it is made of: queries of
//! the window's rows, the arrivals of each update, the drain after the window.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::client::{ARRIVAL_SLOTS, Arrivals, Load};
use crate::procfs::{CpuReading, cores};

/// Distinct connection errors printed.
const ERRORS_SHOWN: usize = 5;

/// Seconds from `closed` until the last update arrived (none for 1 s), at most 60.
pub(crate) async fn drained(load: &Load, closed: Instant) -> f64 {
    let mut seen = load.updates.load(Relaxed);
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(1) && closed.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = load.updates.load(Relaxed);
        if now != seen {
            (seen, last) = (now, Instant::now());
        }
    }
    last.duration_since(closed).as_secs_f64()
}

/// Where the end-to-end time goes: from the event's timestamp to the start of
/// the consumer's transaction that stored it (`ingested_at` is `now()` there)
/// for the rows with ids in `(after, up_to]`, in ms: p50, p90, p99, max.
pub(crate) async fn stored_latency(
    db: &tokio_postgres::Client,
    after: i64,
    up_to: i64,
) -> anyhow::Result<[Option<f64>; 4]> {
    let row = db
        .query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), \
                    percentile_cont(0.9) WITHIN GROUP (ORDER BY ms), \
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms) \
             FROM (SELECT (extract(epoch FROM ingested_at - event_time) * 1000)::float8 AS ms \
                   FROM popularity_events WHERE id > $1 AND id <= $2) AS window_rows",
            &[&after, &up_to],
        )
        .await?;
    Ok([row.get(0), row.get(1), row.get(2), row.get(3)])
}

/// p50, p90 and max of `values` (ms), `None` when empty.
fn spread_of(mut values: Vec<f64>) -> [Option<f64>; 3] {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = ((q * values.len() as f64).ceil() as usize).max(1);
        values.get(rank - 1).copied()
    };
    [at(0.5), at(0.9), values.last().copied()]
}

/// How the updates committed in the window reached the clients.
#[derive(Default)]
pub(crate) struct FanOut {
    /// Updates committed in the window, and how many reached any client.
    ids: usize,
    seen: usize,
    /// Stored (`ingested_at`) → first client: p50, p90, max in ms.
    to_first: [Option<f64>; 3],
    /// First → last client: p50, p90, max in ms.
    spread: [Option<f64>; 3],
    /// Deliveries ÷ (clients × updates), in %.
    reached: f64,
}

/// The window's updates (ids in `(after, up_to]`) as the clients saw them.
pub(crate) async fn fan_out(
    db: &tokio_postgres::Client,
    arrivals: &Arrivals,
    clients: usize,
    after: i64,
    up_to: i64,
) -> anyhow::Result<FanOut> {
    if up_to - after >= ARRIVAL_SLOTS as i64 {
        return Ok(FanOut::default());
    }
    let rows = db
        .query(
            "SELECT id, (extract(epoch FROM ingested_at) * 1000000)::int8 FROM popularity_events \
             WHERE id > $1 AND id <= $2",
            &[&after, &up_to],
        )
        .await?;
    let ids = rows.len();
    let (mut to_first, mut spread, mut deliveries) = (Vec::new(), Vec::new(), 0u64);
    for row in rows {
        let stored: i64 = row.get(1);
        if let Some((first, last, reached)) = arrivals.get(row.get(0)) {
            to_first.push((first - stored) as f64 / 1000.0);
            spread.push((last - first) as f64 / 1000.0);
            deliveries += u64::from(reached);
        }
    }
    Ok(FanOut {
        ids,
        seen: to_first.len(),
        to_first: spread_of(to_first),
        spread: spread_of(spread),
        reached: 100.0 * deliveries as f64 / (clients * ids).max(1) as f64,
    })
}

/// The figures of one run.
pub(crate) struct Report {
    pub(crate) clients: usize,
    pub(crate) rate: f64,
    pub(crate) connected: usize,
    pub(crate) failed: usize,
    pub(crate) connect_secs: f64,
    pub(crate) snapshot_secs: f64,
    pub(crate) first_update: f64,
    pub(crate) secs: f64,
    pub(crate) updates: u64,
    /// p50, p90, p99, max of event timestamp → consumer transaction, in ms.
    pub(crate) stored: [Option<f64>; 4],
    pub(crate) fanned: FanOut,
    /// Seconds after the window until the last update arrived.
    pub(crate) drain: f64,
    pub(crate) cpu_start: CpuReading,
    pub(crate) cpu_end: CpuReading,
    pub(crate) rss_before: u64,
    pub(crate) rss_connected: u64,
    pub(crate) rss_end: u64,
    pub(crate) hwm: u64,
    pub(crate) load_end: String,
}

impl Report {
    /// `serve`'s CPU per delivered message, in µs.
    pub(crate) fn us_per_message(&self, load: &Load) -> f64 {
        let delivered = load.delivered.load(Relaxed);
        if delivered == 0 {
            return f64::NAN;
        }
        1e6 * (self.cpu_end.serve - self.cpu_start.serve) / delivered as f64
    }

    pub(crate) fn print(&self, load: &Load) {
        let delivered = load.delivered.load(Relaxed);
        let per_sec = delivered as f64 / self.secs;
        let expected = self.connected as u64 * self.updates;
        let share = if expected == 0 {
            0.0
        } else {
            100.0 * delivered as f64 / expected as f64
        };
        let cpu = |f: fn(&CpuReading) -> f64| f(&self.cpu_end) - f(&self.cpu_start);
        let pct = |seconds: f64| 100.0 * seconds / self.secs;
        let serve_cpu = cpu(|c| c.serve);
        let us_per_msg = self.us_per_message(load);
        let kib_per_conn = if self.connected == 0 {
            f64::NAN
        } else {
            self.rss_connected.saturating_sub(self.rss_before) as f64 / self.connected as f64
        };
        let (client, consume, produce) = (cpu(|c| c.client), cpu(|c| c.consume), cpu(|c| c.produce));
        let machine = cpu(|c| c.machine_busy);
        let machine_total = cpu(|c| c.machine_total);
        let others = (machine - serve_cpu - client - consume - produce).max(0.0);
        let quantile = |q| {
            load.latency
                .quantile_ms(q)
                .map_or_else(|| "-".to_owned(), |ms| ms.to_string())
        };
        let max_ms = load.latency.max_us.load(Relaxed) as f64 / 1000.0;
        let (p50, p90, p99) = (quantile(0.50), quantile(0.90), quantile(0.99));

        println!(
            "connections   {} connected, {} failed of {} in {:.1} s (all snapshots after {:.1} s); \
                  {} lost later",
            self.connected,
            self.failed,
            self.clients,
            self.connect_secs,
            self.snapshot_secs,
            load.lost.load(Relaxed)
        );
        let errors = load.errors.lock().unwrap_or_else(|p| p.into_inner());
        for (error, n) in errors.iter().take(ERRORS_SHOWN) {
            println!("  {n:>6} × {error}");
        }
        if errors.len() > ERRORS_SHOWN {
            println!("  … and {} other distinct errors", errors.len() - ERRORS_SHOWN);
        }
        drop(errors);
        println!(
            "window        {:.1} s, first update {:.2} s after the producer started",
            self.secs, self.first_update
        );
        println!(
            "updates       {} committed in the window ({:.1}/s)",
            self.updates,
            self.updates as f64 / self.secs
        );
        println!(
            "delivered     {delivered} messages = {per_sec:.0}/s in the window; share {share:.2} % of \
             clients × updates (messages in the window, whichever update)"
        );
        println!(
            "reached       the window's {} updates reached {:.2} % of clients × updates ({} reached \
             any client), counted until no update came for 1 s: {:.1} s after the window",
            self.fanned.ids, self.fanned.reached, self.fanned.seen, self.drain
        );
        println!(
            "coalesces     {} resync + {} snapshots after the first; {} out-of-order ids; \
                  {} unreadable",
            load.resyncs.load(Relaxed),
            load.extra_snapshots.load(Relaxed),
            load.out_of_order.load(Relaxed),
            load.unreadable.load(Relaxed)
        );
        println!(
            "latency       p50 {p50} ms, p90 {p90} ms, p99 {p99} ms, max {max_ms:.1} ms \
                  (event timestamp → client; 1 ms buckets{})",
            match load.latency.negative.load(Relaxed) {
                0 => String::new(),
                n => format!("; {n} negative, as 0"),
            }
        );
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}"));
        let [s50, s90, s99, smax] = self.stored.map(ms);
        println!(
            "  stored    p50 {s50} ms, p90 {s90} ms, p99 {s99} ms, max {smax} ms: event timestamp → the \
             consumer's transaction (ingested_at): producer, broker, fetch"
        );
        let fanned = &self.fanned;
        let [f50, f90, fmax] = fanned.to_first.map(ms);
        let [d50, d90, dmax] = fanned.spread.map(ms);
        println!(
            "  served    per update: stored → first client p50 {f50} ms, p90 {f90} ms, max {fmax} ms; \
             first → last client (the fan-out) p50 {d50} ms, p90 {d90} ms, max {dmax} ms"
        );
        println!(
            "serve CPU     {:.2} s = {:.0} % of a core; {us_per_msg:.2} µs per delivered message",
            serve_cpu,
            pct(serve_cpu)
        );
        println!(
            "serve memory  RSS {} KiB before clients, {} KiB with them, {} KiB at the end \
                  (peak {} KiB): {kib_per_conn:.1} KiB per connection",
            self.rss_before, self.rss_connected, self.rss_end, self.hwm
        );
        println!(
            "cores         serve {:.0} %, load client {:.0} %, consume {:.0} %, produce {:.0} %, \
                  everything else {:.0} % (of one core; the machine: {:.0} % busy of {} cores)",
            pct(serve_cpu),
            pct(client),
            pct(consume),
            pct(produce),
            pct(others),
            100.0 * machine / machine_total.max(1e-9),
            cores()
        );
        println!(
            "extraction    of {} updates, {} needed a full parse; {} read in place were checked \
                  by a full parse: {} mismatches",
            load.updates.load(Relaxed),
            load.fallbacks.load(Relaxed),
            load.checked.load(Relaxed),
            load.mismatches.load(Relaxed)
        );
        println!("load average  {} (at the end)", self.load_end);
        println!();
        println!(
            "| clients | rate/s | connected/failed | p50 ms | p90 ms | p99 ms | max ms | fan-out p50/max ms | \
             share / reached | coalesces | µs CPU/msg | KiB/conn | serve RSS MiB | serve % | client % | load |"
        );
        println!(
            "| {} | {} | {}/{} | {p50} | {p90} | {p99} | {max_ms:.0} | {d50}/{dmax} | {share:.1} / {:.1} % | {} | \
             {us_per_msg:.2} | {kib_per_conn:.1} | {:.0} | {:.0} | {:.0} | {} |",
            self.clients,
            self.rate,
            self.connected,
            self.failed,
            self.fanned.reached,
            load.resyncs.load(Relaxed) + load.extra_snapshots.load(Relaxed),
            self.rss_end as f64 / 1024.0,
            pct(serve_cpu),
            pct(client),
            self.load_end
        );
    }
}
