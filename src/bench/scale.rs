//! The vault on PostgreSQL (`strongroom bench --store postgres://... --nodes N`): get-masked
//! and put at the same load against a fresh embedded RocksDB vault (the default), one vault node
//! on the database, and N nodes sharing it (each role's connections spread over the nodes),
//! back to back in one run, as ratios to RocksDB. The nodes keep their stores in a fresh schema
//! of the database (and of its key-store database), dropped at the end.
//!
//! No vault is pinned to a CPU here: N nodes on one CPU would measure that CPU, and the
//! database's processes run wherever the system puts them.

use std::{
    path::Path,
    sync::{Arc, atomic::AtomicUsize},
    time::{Duration, Instant},
};

use super::{BenchOptions, Row, cpu_us, drive, op, preload, process::Child, zipf::Picker};
use crate::{
    api::pb,
    bench::workloads::Clients,
    client::{self, Client},
    config::{Config, Overrides},
    storage::PgStore,
};

/// The workloads compared, in order.
const WORKLOADS: [&str; 2] = ["get-masked", "put"];

/// How long a token issued on the first node may take to reach the others (they poll every
/// 250 ms).
const TOKEN_SPREAD_LIMIT: Duration = Duration::from_secs(10);

/// Rounds of the spread measurement: a token issued on the first node, then revoked.
const SPREAD_ROUNDS: usize = 8;

/// The promise: a change made on one node is acted on by every other within this.
pub(super) const SPREAD_TARGET: Duration = Duration::from_secs(1);

/// How long each change made on the first node took to be acted on by every other node, one
/// entry per round.
pub(super) struct Spread {
    /// A token issued on the first node, until every other node accepts it.
    pub(super) issued: Vec<Duration>,
    /// That token revoked on the first node, until every other node refuses it.
    pub(super) revoked: Vec<Duration>,
}

impl Spread {
    /// The median and the longest of `times`, in milliseconds.
    pub(super) fn median_and_max_ms(times: &[Duration]) -> (u128, u128) {
        let mut ms: Vec<u128> = times.iter().map(Duration::as_millis).collect();
        ms.sort_unstable();
        (
            ms.get(ms.len() / 2).copied().unwrap_or(0),
            ms.last().copied().unwrap_or(0),
        )
    }

    /// Whether every change was acted on within `SPREAD_TARGET`.
    pub(super) fn met(&self) -> bool {
        self.issued
            .iter()
            .chain(&self.revoked)
            .all(|t| *t <= SPREAD_TARGET)
    }
}

/// What the comparison measured.
pub(super) struct ScaleFigures {
    pub(super) rows: Vec<Row>,
    /// With more than one node: how long changes took to reach the others.
    pub(super) spread: Option<Spread>,
    /// The vault nodes of the last side.
    pub(super) nodes: usize,
    /// The schema the stores were in (dropped).
    pub(super) schema: String,
    /// Per workload: requests per second summed over its passes on RocksDB, on one node, and
    /// on `nodes` nodes.
    pub(super) rates: Vec<(&'static str, [f64; 3])>,
}

impl ScaleFigures {
    /// `side` (1: one node, 2: N nodes) over `base` (0: RocksDB, 1: one node) for `workload`.
    pub(super) fn ratio(&self, workload: &str, side: usize, base: usize) -> Option<f64> {
        let (_, rates) = self.rates.iter().find(|(w, _)| *w == workload)?;
        Some(rates[side] / rates[base].max(1e-9))
    }
}

/// One side of the comparison: its label, its clients, the records it reads, its servers.
struct Side<'a> {
    label: String,
    clients: &'a Clients,
    ids: &'a Arc<Vec<String>>,
    servers: Vec<&'a Child>,
}

impl Side<'_> {
    fn cpu_ticks(&self) -> Option<u64> {
        self.servers.iter().map(|s| s.cpu_ticks()).sum()
    }
}

/// Runs the comparison on the database at `url` with `nodes` nodes, then drops the schema it
/// made, whatever the outcome.
pub(super) async fn run(
    dir: &Path,
    opts: &BenchOptions,
    url: &str,
    nodes: usize,
) -> Result<ScaleFigures, String> {
    let schema = format!("bench_{}", hex::encode(rand::random::<[u8; 6]>()));
    let config = format!(
        "keys_dir = {:?}\n\n[postgres]\nurl = {url:?}\nschema = {schema:?}\n",
        dir.join("pg-keys").display().to_string(),
    );
    // The stores are opened here first: a bad URL or an unreachable database is said before
    // any vault starts, and the schema exists to be dropped.
    let over = Overrides {
        data_dir: Some(dir.join("pg-node-1").join("data")),
        ..Overrides::default()
    };
    let pg = Config::from_toml(&config, over)
        .map_err(|e| format!("--store: {e}"))?
        .postgres
        .ok_or("--store: not a PostgreSQL URL")?;
    let mut stores = Vec::new();
    let mut measured = Ok((Vec::new(), Vec::new(), None));
    for options in [&pg.data, &pg.keys] {
        match PgStore::open(options) {
            Ok(store) => stores.push(store),
            Err(e) => {
                measured = Err(format!("--store: {e}"));
                break;
            }
        }
    }
    if measured.is_ok() {
        measured = measure(dir, opts, &config, nodes).await;
    }
    // Whatever happened, the schemas made are dropped.
    let mut dropped = Ok(());
    for store in stores {
        if let Err(e) = store.drop_schema() {
            dropped = Err(format!(
                "the bench's schema {schema} could not be dropped: {e}"
            ));
        }
    }
    let (rows, rates, spread) = measured?;
    dropped?;
    Ok(ScaleFigures {
        rows,
        spread,
        nodes,
        schema,
        rates,
    })
}

type Measured = (Vec<Row>, Vec<(&'static str, [f64; 3])>, Option<Spread>);

async fn measure(
    dir: &Path,
    opts: &BenchOptions,
    config: &str,
    nodes: usize,
) -> Result<Measured, String> {
    let (rocks, token) = Child::vault(
        &dir.join("rocksdb"),
        &opts.policies,
        false,
        true,
        &super::store_config(opts),
    )?;
    let rocks_clients = Clients::connect(&rocks.addr, token.trim(), opts.connections).await?;
    let rocks_ids = Arc::new(
        preload(
            &rocks_clients,
            opts.records,
            opts.in_flight,
            "preloading (RocksDB)",
        )
        .await?,
    );

    // The first node sets the database up and prints the admin token; the others join it.
    let (first, token) = Child::vault(&dir.join("pg-node-1"), &opts.policies, false, true, config)?;
    let mut servers = vec![first];
    for n in 2..=nodes {
        servers.push(Child::node(
            &dir.join(format!("pg-node-{n}")),
            &opts.policies,
            config,
        )?);
    }
    let one = Clients::connect(&servers[0].addr, token.trim(), opts.connections).await?;
    let addrs: Vec<&str> = servers.iter().map(|s| s.addr.as_str()).collect();
    let many = Clients::spread(&addrs, one.tokens.clone(), opts.connections, None).await?;
    // The nodes share one database: one set of records for both sides.
    let ids = Arc::new(
        preload(
            &one,
            opts.records,
            opts.in_flight,
            "preloading (PostgreSQL)",
        )
        .await?,
    );
    tokens_known(&many, &ids[0]).await?;
    let spread = if addrs.len() > 1 {
        Some(spread(&one.admin[0], &addrs[1..], &ids[0]).await?)
    } else {
        None
    };

    let sides = [
        Side {
            label: "rocksdb".into(),
            clients: &rocks_clients,
            ids: &rocks_ids,
            servers: vec![&rocks],
        },
        Side {
            label: "postgres, 1 node".into(),
            clients: &one,
            ids: &ids,
            servers: vec![&servers[0]],
        },
        Side {
            label: format!("postgres, {nodes} nodes"),
            clients: &many,
            ids: &ids,
            servers: servers.iter().collect(),
        },
    ];
    let no_shreds = Arc::new((Vec::new(), AtomicUsize::new(0)));
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    for workload in WORKLOADS {
        // There and back (RocksDB, 1, N, N, 1, RocksDB): a drift of the machine over the
        // passes (other load, the stores growing under put) weighs on every side alike.
        let mut sums = [0.0; 3];
        for (pass, i) in [0, 1, 2, 2, 1, 0].into_iter().enumerate() {
            let side = &sides[i];
            let f = op(
                workload,
                side.clients,
                Arc::clone(side.ids),
                Arc::new(Picker::uniform(side.ids.len())),
                Arc::clone(&no_shreds),
            )?;
            let cpu_before = side.cpu_ticks();
            let stats = drive(opts.in_flight, opts.duration, opts.requests, f).await;
            if let Some(e) = &stats.first_error {
                return Err(format!(
                    "{workload} ({}): {} errors, first: {e}",
                    side.label, stats.errors
                ));
            }
            sums[i] += stats.per_second();
            rows.push(Row {
                name: format!("{workload} ({}, pass {})", side.label, pass + 1),
                server_cpu_us: cpu_us(cpu_before, side.cpu_ticks(), stats.requests),
                stats,
            });
        }
        rates.push((workload, sums));
    }
    Ok((rows, rates, spread))
}

/// Issues a support token on the first node through `admin` and times until every node of
/// `others` accepts it (a read of record `id`), then revokes it there and times until every
/// one refuses it; `SPREAD_ROUNDS` times.
async fn spread(admin: &Client, others: &[&str], id: &str) -> Result<Spread, String> {
    let mut figures = Spread {
        issued: Vec::new(),
        revoked: Vec::new(),
    };
    for round in 0..SPREAD_ROUNDS {
        let subject = format!("svc:bench-spread-{round}");
        let token = admin
            .tokens
            .clone()
            .create_token(pb::CreateTokenRequest {
                subject: subject.clone(),
                roles: vec!["role:support".into()],
                ..Default::default()
            })
            .await
            .map_err(|s| format!("issuing a token for the spread: {}", s.message()))?
            .into_inner()
            .token;
        let started = Instant::now();
        let mut readers = Vec::new();
        for addr in others {
            readers.push(client::connect(addr, &token).await?);
        }
        for reader in &readers {
            acted_on(reader, id, started, true).await?;
        }
        figures.issued.push(started.elapsed());
        admin
            .tokens
            .clone()
            .revoke_tokens(pb::RevokeTokensRequest { subject })
            .await
            .map_err(|s| format!("revoking the spread's token: {}", s.message()))?;
        let started = Instant::now();
        for reader in &readers {
            acted_on(reader, id, started, false).await?;
        }
        figures.revoked.push(started.elapsed());
    }
    Ok(figures)
}

/// Reads record `id` through `reader` until its token is `accepted` (or refused, if not).
async fn acted_on(
    reader: &Client,
    id: &str,
    started: Instant,
    accepted: bool,
) -> Result<(), String> {
    loop {
        let read = reader
            .records
            .clone()
            .get_record(pb::GetRecordRequest {
                id: id.to_owned(),
                fields: vec![],
                purpose: "support".into(),
            })
            .await;
        match read {
            Ok(_) if accepted => return Ok(()),
            Err(s) if s.code() == tonic::Code::Unauthenticated && !accepted => return Ok(()),
            Ok(_) => {}
            // Unknown yet or refused already; or, on a node between its token list and its
            // table, known with no row yet or no row any more.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) => {}
            Err(s) => return Err(format!("a read through another node: {}", s.message())),
        }
        if started.elapsed() > TOKEN_SPREAD_LIMIT {
            return Err(format!(
                "a token {} on the first node was not {} by every node within {} s",
                if accepted { "issued" } else { "revoked" },
                if accepted { "accepted" } else { "refused" },
                TOKEN_SPREAD_LIMIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until every node accepts the support token the first node issued (the others learn
/// of it by polling): each support connection reads record `id`.
async fn tokens_known(clients: &Clients, id: &str) -> Result<(), String> {
    let started = Instant::now();
    for client in &clients.support {
        acted_on(client, id, started, true).await?;
    }
    Ok(())
}
