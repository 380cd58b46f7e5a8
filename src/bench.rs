//! `strongroom bench`: the product's own load generator (like pgbench or redis-benchmark). It
//! starts the vault (and an echo server for the ceiling) as child processes on a temp data dir,
//! or targets a running vault with `--addr`, drives each workload with N connections and M
//! requests in flight, and reports throughput, p50/p99/p999 latency, server CPU per request,
//! and ratios to ceilings measured in the same run.

mod audit_index;
mod background;
mod ceilings;
mod consent;
mod load;
mod policy;
mod process;
mod retention;
mod rotation;
mod scale;
mod tls;
mod workloads;
mod zipf;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::AtomicUsize},
    time::{Duration, Instant},
};

use serde_json::json;

pub use ceilings::{field_cost, serve_echo};
use load::{Stats, drive};
pub use policy::{decision_cost, generated_policy};
use process::Child;
use workloads::{Clients, op, preload, status};
use zipf::Picker;

use crate::api::pb;

/// The shipped `customers` collection's fields, in schema order, each with a sample value of
/// its type: the shape every workload and ceiling uses.
const CUSTOMER_FIELDS: [(&str, &str); 8] = [
    ("name", "Ada Lovelace"),
    ("email", "ada@example.com"),
    ("phone", "+442079460958"),
    ("address", "12 St James's Square, London"),
    ("date_of_birth", "1815-12-10"),
    ("ssn", "123-45-6789"),
    ("card_number", "4242424242424242"),
    ("notes", "prefers email"),
];

/// What to run, and how hard.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A running vault to target (its admin token in `STRONGROOM_TOKEN`); `None` starts one.
    pub addr: Option<String>,
    /// TCP connections per role.
    pub connections: usize,
    /// Requests in flight in total.
    pub in_flight: usize,
    /// How long each workload runs.
    pub duration: Duration,
    /// Stop each workload after this many requests instead.
    pub requests: Option<u64>,
    /// Records preloaded before the read workloads.
    pub records: usize,
    /// Workloads to run, in order.
    pub workloads: Vec<String>,
    /// Zipf exponent for record choice; `None` is uniform.
    pub zipf: Option<f64>,
    /// The policies directory the started vault uses.
    pub policies: PathBuf,
    /// Pin the server to CPU 0 and this process to the others (with `taskset`).
    pub pin: bool,
    /// Print JSON instead of a table.
    pub json: bool,
    /// The started vault's `rewrap_per_second` (its default if `None`).
    pub rewrap_per_second: Option<u32>,
    /// The started vaults' `block_cache_mib` (their default if `None`).
    pub block_cache_mib: Option<usize>,
    /// Also run get-masked and put on two fresh vaults, one serving TLS and one plaintext, back
    /// to back, and report what TLS costs.
    pub tls: bool,
    /// Events the `audit-query` workload appends before it queries.
    pub audit_events: u64,
    /// Also run get-masked and put on vault nodes on this PostgreSQL database (`postgres://`),
    /// one and `nodes`, and on a fresh RocksDB vault, back to back.
    pub store: Option<String>,
    /// The vault nodes of the larger PostgreSQL side.
    pub nodes: usize,
}

/// Every workload, in the default order (shred last: it destroys records). `rotation` and
/// `retention` are not in the default run: they want many records (`--records 100000`).
pub const WORKLOADS: [&str; 18] = [
    "put",
    "batch-put",
    "get-full",
    "get-masked",
    "batch-get",
    "get-consent",
    "find",
    "get-denied",
    "update",
    "mix",
    "shred",
    "shred-wait",
    "audit-cost",
    "policy",
    "rotation",
    "retention",
    "audit-query",
    "settle",
];

/// One row of the report.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    stats: Stats,
    server_cpu_us: Option<f64>,
}

fn cpu_us(before: Option<u64>, after: Option<u64>, requests: u64) -> Option<f64> {
    let ticks = after?.checked_sub(before?)?;
    // Linux reports CPU time in USER_HZ ticks, 100 per second.
    Some(ticks as f64 * 10_000.0 / requests.max(1) as f64)
}

/// Waits until the vault the bench started is idle: under 2% of a CPU over each of 3 seconds in
/// a row, which is when its background flushes and compactions are done. Returns how long that
/// took.
///
/// # Errors
/// A message if the bench started no vault (`--addr`), or it never goes idle in an hour.
async fn settle(server: Option<&Child>) -> Result<Duration, String> {
    let server = server.ok_or("settle needs the vault the bench starts")?;
    let started = Instant::now();
    let mut quiet = 0;
    let mut before = server.cpu_ticks();
    while quiet < 3 {
        if started.elapsed() > Duration::from_secs(3600) {
            return Err("the vault was still busy an hour after the load".into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = server.cpu_ticks();
        // Ticks are hundredths of a second: 2 in a second is 2% of a CPU.
        let busy = now
            .zip(before)
            .map_or(u64::MAX, |(n, b)| n.saturating_sub(b));
        quiet = if busy <= 2 { quiet + 1 } else { 0 };
        before = now;
    }
    Ok(started.elapsed())
}

/// Runs the benchmark and prints the report.
///
/// # Errors
/// A message if a server cannot be started or reached, or a workload fails.
pub async fn run(opts: BenchOptions) -> Result<(), String> {
    if opts.pin {
        process::pin_self_away_from_cpu0();
    }
    if let Some(unknown) = opts
        .workloads
        .iter()
        .find(|w| !WORKLOADS.contains(&w.as_str()))
    {
        return Err(format!(
            "unknown workload {unknown:?}; known: {}",
            WORKLOADS.join(", ")
        ));
    }
    if opts.addr.is_some() && opts.workloads.iter().any(|w| w == "audit-cost") {
        return Err(
            "the audit-cost workload compares reads against a second vault with read \
                    auditing off that the bench starts itself, so it cannot run with --addr; \
                    leave it out of --workload"
                .into(),
        );
    }
    if opts.addr.is_some() && opts.workloads.iter().any(|w| w == "get-consent") {
        return Err(
            "the get-consent workload reads for telemarketing under a policy the bench gives \
             the vault it starts, so it cannot run with --addr; leave it out of --workload"
                .into(),
        );
    }
    if opts.addr.is_some() && opts.workloads.iter().any(|w| w == "retention") {
        return Err(
            "the retention workload sweeps records of a collection that expires within seconds, \
             declared in the policies the bench gives the vault it starts, so it cannot run with \
             --addr; leave it out of --workload"
                .into(),
        );
    }
    if opts.addr.is_some() && opts.workloads.iter().any(|w| w == "settle") {
        return Err(
            "settle watches the CPU of the vault the bench starts, so it cannot run with --addr; \
             leave it out of --workload"
                .into(),
        );
    }
    if opts.addr.is_some() && opts.tls {
        return Err(
            "--tls compares the vault the bench starts with a second one serving TLS, so it \
             cannot run with --addr"
                .into(),
        );
    }
    if opts.addr.is_some() && (opts.rewrap_per_second.is_some() || opts.block_cache_mib.is_some()) {
        return Err(
            "--rewrap-per-second and --block-cache-mib configure the vault the bench starts; \
             with --addr, set them in that vault's config instead"
                .into(),
        );
    }
    if opts.addr.is_some() && opts.store.is_some() {
        return Err(
            "--store starts vault nodes on the database to compare them with a RocksDB vault, \
             so it cannot run with --addr"
                .into(),
        );
    }
    if !(2..=MAX_NODES).contains(&opts.nodes) {
        return Err(format!(
            "--nodes must be between 2 and {MAX_NODES} (one node is always measured)"
        ));
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut rotation_figures = None;
    let mut retention_figures = None;
    let mut notes: Vec<String> = Vec::new();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (server, addr, admin_token) = match &opts.addr {
        Some(addr) => {
            let token = std::env::var("STRONGROOM_TOKEN")
                .map_err(|_| "with --addr, set STRONGROOM_TOKEN to an admin token".to_owned())?;
            (None, addr.clone(), token)
        }
        None => {
            let mut config = store_config(&opts);
            if let Some(r) = opts.rewrap_per_second {
                config.push_str(&format!("rewrap_per_second = {r}\n"));
            }
            let policies = consent::policies(&opts.policies, dir.path())?;
            if opts.workloads.iter().any(|w| w == "retention") {
                retention::declare(&policies)?;
                config.push_str(retention::CONFIG);
            }
            let (child, token) = Child::vault(
                &dir.path().join("vault"),
                &policies,
                opts.pin,
                true,
                &config,
            )?;
            let addr = child.addr.clone();
            (Some(child), addr, token)
        }
    };
    let clients = Clients::connect(&addr, admin_token.trim(), opts.connections).await?;
    let wanted = |w: &str| opts.workloads.iter().any(|x| x == w);
    let needs_records = opts.workloads.iter().any(|w| {
        !matches!(
            w.as_str(),
            "put" | "batch-put" | "policy" | "audit-query" | "settle"
        )
    });
    let ids = Arc::new(if needs_records {
        preload(&clients, opts.records, opts.in_flight, "preloading").await?
    } else {
        Vec::new()
    });
    if wanted("get-consent") {
        consent::grant(&clients, &ids, opts.in_flight).await?;
    }
    // A tenth of all records, in the collection that expires: when they were all created.
    let leads_loaded = if wanted("retention") {
        let count = (opts.records as f64 * retention::LEADS_PER_CUSTOMER).ceil() as usize;
        workloads::preload_into(
            &clients,
            retention::COLLECTION,
            count,
            opts.in_flight,
            "preloading records that expire",
        )
        .await?;
        Some(Instant::now())
    } else {
        None
    };
    let shred_count = if wanted("shred") || wanted("shred-wait") || wanted("mix") {
        (opts.records / 2).clamp(100, 20_000)
    } else {
        0
    };
    let shred_pool = Arc::new((
        if shred_count > 0 {
            preload(
                &clients,
                shred_count,
                opts.in_flight,
                "preloading records to shred",
            )
            .await?
        } else {
            Vec::new()
        },
        AtomicUsize::new(0),
    ));
    let picker = Arc::new(match opts.zipf {
        Some(s) => Picker::zipf(ids.len(), s),
        None => Picker::uniform(ids.len()),
    });

    // Message sizes for the echo ceiling: those of a real get-full.
    let (mut request_size, mut response_size) = (60u32, 600u32);
    if let (Some(id), Some(admin)) = (ids.first(), clients.admin.first()) {
        let req = pb::GetRecordRequest {
            id: id.clone(),
            fields: vec![],
            purpose: "support".into(),
        };
        request_size = u32::try_from(prost::Message::encoded_len(&req)).unwrap_or(60);
        let mut a = admin.clone();
        if let Ok(resp) = a.records.get_record(req).await {
            response_size =
                u32::try_from(prost::Message::encoded_len(resp.get_ref())).unwrap_or(600);
        }
    }

    // Rows after a `settle` are named so.
    let mut suffix = "";
    for workload in &opts.workloads {
        match workload.as_str() {
            "audit-cost" | "policy" => continue,
            "settle" => {
                let waited = settle(server.as_ref()).await?;
                notes.push(format!(
                    "settle: the vault went idle (background compactions done) {:.0} s after \
                     the workloads before it",
                    waited.as_secs_f64()
                ));
                suffix = " (settled)";
            }
            "rotation" => {
                let figures = rotation::run(
                    &clients,
                    &ids,
                    &picker,
                    opts.in_flight,
                    opts.duration,
                    || server.as_ref().and_then(Child::cpu_ticks),
                )
                .await?;
                rows.extend(figures.rows());
                rotation_figures = Some(figures);
            }
            "retention" => {
                let loaded = leads_loaded.ok_or("the records that expire were not loaded")?;
                let figures = retention::run(
                    &clients,
                    &ids,
                    &picker,
                    opts.in_flight,
                    opts.duration,
                    loaded,
                    || server.as_ref().and_then(Child::cpu_ticks),
                )
                .await?;
                rows.extend(figures.rows());
                retention_figures = Some(figures);
            }
            "audit-query" => {
                let figures =
                    audit_index::run(&dir.path().join("audit-query"), opts.audit_events).await?;
                rows.extend(figures.rows());
                notes.extend(figures.notes());
            }
            w => {
                let cpu_before = server.as_ref().and_then(Child::cpu_ticks);
                let f = op(
                    w,
                    &clients,
                    Arc::clone(&ids),
                    Arc::clone(&picker),
                    Arc::clone(&shred_pool),
                )?;
                // The two shred workloads share the pool of records to destroy.
                let requests = if w.starts_with("shred") {
                    opts.requests.or(Some(shred_pool.0.len() as u64 / 2))
                } else {
                    opts.requests
                };
                let stats = drive(opts.in_flight, opts.duration, requests, f).await;
                let cpu_after = server.as_ref().and_then(Child::cpu_ticks);
                if let Some(e) = &stats.first_error {
                    notes.push(format!("{w}: {} errors, first: {e}", stats.errors));
                }
                rows.push(Row {
                    name: format!("{w}{suffix}"),
                    server_cpu_us: cpu_us(cpu_before, cpu_after, stats.requests),
                    stats,
                });
            }
        }
    }
    let rss_mib = server
        .as_ref()
        .and_then(Child::rss_kib)
        .map(|k| k as f64 / 1024.0);

    // Reads with auditing off, same records, same load: what the audit log costs a read.
    let mut audit_ratio = None;
    if wanted("audit-cost") && opts.addr.is_none() {
        let (quiet, token) = Child::vault(
            &dir.path().join("vault-noaudit"),
            &opts.policies,
            opts.pin,
            false,
            &store_config(&opts),
        )?;
        let quiet_clients = Clients::connect(&quiet.addr, &token, opts.connections).await?;
        let quiet_ids = Arc::new(
            preload(
                &quiet_clients,
                opts.records,
                opts.in_flight,
                "preloading (auditing off)",
            )
            .await?,
        );
        let quiet_picker = Arc::new(Picker::uniform(quiet_ids.len()));
        let empty = Arc::new((Vec::new(), AtomicUsize::new(0)));
        let f = op(
            "get-masked",
            &quiet_clients,
            Arc::clone(&quiet_ids),
            quiet_picker,
            Arc::clone(&empty),
        )?;
        let cpu_before = quiet.cpu_ticks();
        let off = drive(opts.in_flight, opts.duration, opts.requests, f).await;
        let off_cpu = cpu_us(cpu_before, quiet.cpu_ticks(), off.requests);
        drop(quiet);
        // And again with auditing on, right after, on the first server.
        let f = op(
            "get-masked",
            &clients,
            Arc::clone(&ids),
            Arc::clone(&picker),
            Arc::clone(&shred_pool),
        )?;
        let cpu_before = server.as_ref().and_then(Child::cpu_ticks);
        let on = drive(opts.in_flight, opts.duration, opts.requests, f).await;
        let on_cpu = cpu_us(
            cpu_before,
            server.as_ref().and_then(Child::cpu_ticks),
            on.requests,
        );
        audit_ratio = Some(on.per_second() / off.per_second().max(1e-9));
        rows.push(Row {
            name: "get-masked (audit off)".into(),
            stats: off,
            server_cpu_us: off_cpu,
        });
        rows.push(Row {
            name: "get-masked (audit on)".into(),
            stats: on,
            server_cpu_us: on_cpu,
        });
    }
    // The same reads and writes over TLS and plaintext, on two fresh vaults.
    let mut tls_cost = if opts.tls {
        Some(tls::run(dir.path(), &opts).await?)
    } else {
        None
    };
    if let Some(cost) = &mut tls_cost {
        rows.append(&mut cost.rows);
    }
    // The same reads and writes on PostgreSQL with one and with N vault nodes, and on RocksDB.
    let mut scale_figures = match &opts.store {
        Some(url) => Some(scale::run(&dir.path().join("scale"), &opts, url, opts.nodes).await?),
        None => None,
    };
    if let Some(figures) = &mut scale_figures {
        rows.append(&mut figures.rows);
    }
    drop(server);

    // The echo ceiling, same concurrency and message sizes, server pinned the same way.
    let echo = Child::echo(opts.pin)?;
    let mut echo_clients = Vec::new();
    for _ in 0..opts.connections {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", echo.addr))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("cannot reach the echo server: {e}"))?;
        echo_clients.push(pb::echo_client::EchoClient::new(channel));
    }
    let payload = vec![0x5au8; request_size.saturating_sub(4) as usize];
    let cpu_before = echo.cpu_ticks();
    let echo_stats = drive(opts.in_flight, opts.duration, opts.requests, move |n| {
        let mut c = echo_clients[n as usize % echo_clients.len()].clone();
        let payload = payload.clone();
        async move {
            c.echo(pb::EchoRequest {
                payload,
                response_size,
            })
            .await
            .map(|_| ())
            .map_err(|s| status(&s))
        }
    })
    .await;
    let echo_cpu = cpu_us(cpu_before, echo.cpu_ticks(), echo_stats.requests);
    drop(echo);
    let echo_rate = echo_stats.per_second();

    let (seal_us, open_us) = ceilings::crypto_cost(20_000);
    let (rocks_put, rocks_get) = ceilings::rocksdb_ceiling(
        opts.in_flight.min(64),
        opts.duration.min(Duration::from_secs(5)),
    )?;
    let policy = if wanted("policy") {
        Some(decision_cost(&opts.policies, 15_000, 200_000).await?)
    } else {
        None
    };

    if opts.json {
        let rows_json: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "workload": r.name, "requests": r.stats.requests, "errors": r.stats.errors,
                    "per_second": r.stats.per_second(), "p50_us": r.stats.p50_us, "p99_us": r.stats.p99_us,
                    "p999_us": r.stats.p999_us, "server_cpu_us_per_request": r.server_cpu_us,
                    "ratio_to_echo": r.stats.per_second() / echo_rate.max(1e-9),
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "options": {"connections": opts.connections, "in_flight": opts.in_flight,
                            "duration_s": opts.duration.as_secs_f64(), "records": opts.records,
                            "zipf": opts.zipf, "pinned": opts.pin, "block_cache_mib": opts.block_cache_mib},
                "workloads": rows_json,
                "ceilings": {
                    "echo_per_second": echo_rate, "echo_p99_us": echo_stats.p99_us, "echo_server_cpu_us": echo_cpu,
                    "crypto_write_us": seal_us, "crypto_read_us": open_us,
                    "rocksdb_synced_batches_per_second": rocks_put, "rocksdb_gets_per_second": rocks_get,
                },
                "audit_on_over_off": audit_ratio,
                "find_over_get_masked": over_get_masked(&rows, "find"),
                "get_consent_over_get_masked": over_get_masked(&rows, "get-consent"),
                "batch_get_records_over_get_masked": over_get_masked(&rows, "batch-get")
                    .map(|r| r * workloads::BATCH_SIZE as f64),
                "batch_put_records_over_put": over(&rows, "batch-put", "put")
                    .map(|r| r * workloads::BATCH_SIZE as f64),
                "postgres": scale_figures.as_ref().map(|f| json!({
                    "nodes": f.nodes,
                    "get_masked": scale_ratios(f, "get-masked"),
                    "put": scale_ratios(f, "put"),
                    "spread": f.spread.as_ref().map(|s| json!({
                        "issued_ms": s.issued.iter().map(Duration::as_millis).collect::<Vec<_>>(),
                        "revoked_ms": s.revoked.iter().map(Duration::as_millis).collect::<Vec<_>>(),
                        "target_ms": scale::SPREAD_TARGET.as_millis(),
                        "met": s.met(),
                    })),
                })),
                "tls_over_plaintext": tls_cost.as_ref().map(|c| json!({
                    "get_masked": c.read_ratio, "put": c.write_ratio,
                })),
                "rotation": rotation_figures.as_ref().map(|f| json!({
                    "rewrap_alone": {"keys": f.alone.keys, "server_ms": f.alone.server_ms,
                                     "wall_ms": f.alone.wall.as_millis(), "per_second": f.alone.per_second()},
                    "rewrap_under_reads": {"keys": f.under_reads.keys, "server_ms": f.under_reads.server_ms,
                                           "wall_ms": f.under_reads.wall.as_millis(), "per_second": f.under_reads.per_second()},
                    "reads_rotating_over_not": f.reads.ratio(),
                    "rewrap_per_second_limit": opts.rewrap_per_second,
                })),
                "retention": retention_figures.as_ref().map(|f| json!({
                    "examined": f.sweep.examined, "shredded_records": f.sweep.shredded_records,
                    "sweep_ms": f.sweep_time.as_millis(), "shreds_per_second": f.shreds_per_second(),
                    "reads_sweeping_over_not": f.reads.ratio(),
                })),
                "server_rss_mib": rss_mib,
                "policy": policy.map(|(small, big, apply, rules)| json!({
                    "decision_ns_shipped": small, "decision_ns_big": big, "big_rules": rules, "apply_big_s": apply,
                })),
                "notes": notes,
            })
        );
        return Ok(());
    }
    println!(
        "strongroom bench: {} connections, {} in flight, {:.0}s per workload, {} records ({}){}{}",
        opts.connections,
        opts.in_flight,
        opts.duration.as_secs_f64(),
        opts.records,
        opts.zipf
            .map_or("uniform".to_owned(), |s| format!("zipf {s}")),
        opts.block_cache_mib
            .map_or_else(String::new, |m| format!(", block cache {m} MiB")),
        if opts.pin {
            ", server pinned to cpu 0"
        } else {
            ""
        }
    );
    println!();
    let width = rows.iter().map(|r| r.name.len()).fold(24, usize::max);
    println!(
        "{:<width$} {:>10} {:>9} {:>9} {:>9} {:>12} {:>8}",
        "workload", "req/s", "p50 ms", "p99 ms", "p999 ms", "srv cpu us", "x echo"
    );
    let ms = |us: u64| us as f64 / 1000.0;
    let line = |name: &str, s: &Stats, cpu: Option<f64>| {
        println!(
            "{name:<width$} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>12} {:>8.2}",
            s.per_second(),
            ms(s.p50_us),
            ms(s.p99_us),
            ms(s.p999_us),
            cpu.map_or("-".to_owned(), |c| format!("{c:.1}")),
            s.per_second() / echo_rate.max(1e-9)
        );
    };
    for r in &rows {
        line(&r.name, &r.stats, r.server_cpu_us);
    }
    line("echo (ceiling)", &echo_stats, echo_cpu);
    println!();
    println!("ceilings in this run:");
    println!(
        "  raw crypto per request: write (DEK + wrap + 8 seals) {seal_us:.2} us, read (unwrap + 8 opens) {open_us:.2} us"
    );
    println!(
        "  raw RocksDB: {rocks_put:.0} synced record-shaped batches/s, {rocks_get:.0} cached gets/s"
    );
    if let Some(r) = over_get_masked(&rows, "find") {
        println!(
            "  find by email (support) reaches {:.0}% of get-masked",
            r * 100.0
        );
    }
    if let Some(r) = over_get_masked(&rows, "batch-get") {
        println!(
            "  batch-get ({n} ids a call) reads {:.1}x the records/s of get-masked",
            r * workloads::BATCH_SIZE as f64,
            n = workloads::BATCH_SIZE
        );
    }
    if let Some(r) = over(&rows, "batch-put", "put") {
        println!(
            "  batch-put ({n} records a call) writes {:.1}x the records/s of put",
            r * workloads::BATCH_SIZE as f64,
            n = workloads::BATCH_SIZE
        );
    }
    if let Some(r) = over_get_masked(&rows, "get-consent") {
        println!(
            "  get-masked with consent checks (telemarketing) reaches {:.0}% of get-masked without (support)",
            r * 100.0
        );
    }
    if let Some(r) = audit_ratio {
        println!(
            "  reads with auditing on reach {:.0}% of reads with auditing off",
            r * 100.0
        );
    }
    if let Some(c) = &tls_cost {
        println!(
            "  over TLS, get-masked reaches {:.0}% and put {:.0}% of the same over plaintext",
            c.read_ratio * 100.0,
            c.write_ratio * 100.0
        );
    }
    if let Some(f) = &scale_figures {
        for workload in ["get-masked", "put"] {
            let r = |side, base| f.ratio(workload, side, base).unwrap_or(0.0) * 100.0;
            println!(
                "  on PostgreSQL, {workload} reaches {:.0}% of RocksDB with 1 vault node and \
                 {:.0}% with {} ({:.0}% of 1 node)",
                r(1, 0),
                r(2, 0),
                f.nodes,
                r(2, 1)
            );
        }
        if let Some(spread) = &f.spread {
            let issued = scale::Spread::median_and_max_ms(&spread.issued);
            let revoked = scale::Spread::median_and_max_ms(&spread.revoked);
            println!(
                "  a token issued on node 1 was accepted by every other node after {} ms \
                 (median; longest {} ms), and revoked, refused after {} ms (longest {} ms), \
                 over {} rounds: target {} ms {}",
                issued.0,
                issued.1,
                revoked.0,
                revoked.1,
                spread.issued.len(),
                scale::SPREAD_TARGET.as_millis(),
                if spread.met() { "met" } else { "NOT met" }
            );
        }
        println!(
            "  (no vault pinned in these rows; srv cpu is the vault nodes' own, not the \
             database's; their stores were in schema {}, dropped)",
            f.schema
        );
    }
    if let Some(f) = &rotation_figures {
        let limit = opts
            .rewrap_per_second
            .map_or("the vault's default".to_owned(), |r| r.to_string());
        println!(
            "  key rotation (rate limit {limit}/s): alone, {} keys rewrapped in {} ms = {:.0} keys/s; \
             under the reads, {} keys in {} ms = {:.0} keys/s",
            f.alone.keys,
            f.alone.server_ms,
            f.alone.per_second(),
            f.under_reads.keys,
            f.under_reads.server_ms,
            f.under_reads.per_second()
        );
        println!(
            "  reads during the rotation reach {:.0}% of reads without ({:.1} s of reads while rotating)",
            f.reads.ratio() * 100.0,
            f.reads.during.0.elapsed.as_secs_f64()
        );
    }
    if let Some(f) = &retention_figures {
        println!(
            "  retention sweep: {} records examined, {} expired records shredded in {:.1} s ({:.0} shreds/s)",
            f.sweep.examined,
            f.sweep.shredded_records,
            f.sweep_time.as_secs_f64(),
            f.shreds_per_second()
        );
        println!(
            "  reads during the sweep reach {:.0}% of reads without",
            f.reads.ratio() * 100.0
        );
    }
    if let Some(rss) = rss_mib {
        println!("  vault RSS after the run: {rss:.0} MiB");
    }
    if let Some((small, big, apply, rules)) = policy {
        println!(
            "  decision for 8 fields: {small:.0} ns with the shipped policy, {big:.0} ns at {rules} rules ({:+.1}%); compiling and checking {rules} rules: {apply:.2} s",
            (big / small - 1.0) * 100.0
        );
    }
    for n in &notes {
        println!("  note: {n}");
    }
    Ok(())
}

/// The config text every vault the bench starts shares: its store's options.
pub(super) fn store_config(opts: &BenchOptions) -> String {
    opts.block_cache_mib
        .map_or_else(String::new, |m| format!("block_cache_mib = {m}\n"))
}

/// The most vault nodes `--nodes` starts.
const MAX_NODES: usize = 8;

/// One workload's PostgreSQL ratios, for the JSON report.
fn scale_ratios(f: &scale::ScaleFigures, workload: &str) -> serde_json::Value {
    json!({
        "one_node_over_rocksdb": f.ratio(workload, 1, 0),
        "nodes_over_rocksdb": f.ratio(workload, 2, 0),
        "nodes_over_one_node": f.ratio(workload, 2, 1),
    })
}

/// Requests per second of workload `name` over get-masked reads per second, when both ran.
fn over_get_masked(rows: &[Row], name: &str) -> Option<f64> {
    over(rows, name, "get-masked")
}

/// Requests per second of workload `name` over those of `base`, when both ran.
fn over(rows: &[Row], name: &str, base: &str) -> Option<f64> {
    let rate = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .map(|r| r.stats.per_second())
    };
    Some(rate(name)? / rate(base)?.max(1e-9))
}
