//! What TLS costs (`strongroom bench --tls`): the same get-masked and put, at the same load,
//! against two fresh vaults with the same history, one on plaintext loopback and one serving
//! TLS (rustls) with a certificate `tls init` writes, back to back in one run.

use std::{
    path::Path,
    sync::{Arc, atomic::AtomicUsize},
};

use super::{BenchOptions, Row, cpu_us, drive, op, preload, process::Child, zipf::Picker};
use crate::{
    bench::workloads::Clients,
    client::ClientTls,
    tls::{InitOptions, init},
};

/// The rows of the comparison, and TLS over plaintext throughput for reads and writes.
pub(super) struct TlsCost {
    pub(super) rows: Vec<Row>,
    pub(super) read_ratio: f64,
    pub(super) write_ratio: f64,
}

/// Starts a plaintext and a TLS vault in `dir`, preloads both alike, and runs get-masked then
/// put on each, in the order plaintext, TLS, TLS, plaintext; the ratios are of the summed rates.
pub(super) async fn run(dir: &Path, opts: &BenchOptions) -> Result<TlsCost, String> {
    let certs = dir.join("tls");
    init(&InitOptions {
        dir: certs.clone(),
        names: vec![],
        clients: vec![],
    })?;
    let config = format!(
        "{}tls_cert_file = {:?}\ntls_key_file = {:?}\n",
        super::store_config(opts),
        certs.join("server.pem").display().to_string(),
        certs.join("server.key").display().to_string(),
    );
    let (secure, token) = Child::vault(
        &dir.join("vault-tls"),
        &opts.policies,
        opts.pin,
        true,
        &config,
    )?;
    let port = secure
        .addr
        .rsplit(':')
        .next()
        .ok_or("the TLS vault printed no port")?;
    let trust = ClientTls::from_files(&certs.join("ca.pem"), None)?;
    let secure_clients = Clients::connect_with(
        &format!("https://localhost:{port}"),
        token.trim(),
        opts.connections,
        Some(&trust),
    )
    .await?;
    let secure_ids = Arc::new(
        preload(
            &secure_clients,
            opts.records,
            opts.in_flight,
            "preloading (TLS)",
        )
        .await?,
    );
    let (plain_server, token) = Child::vault(
        &dir.join("vault-plain"),
        &opts.policies,
        opts.pin,
        true,
        &super::store_config(opts),
    )?;
    let plain = Clients::connect(&plain_server.addr, token.trim(), opts.connections).await?;
    let ids = Arc::new(
        preload(
            &plain,
            opts.records,
            opts.in_flight,
            "preloading (plaintext)",
        )
        .await?,
    );
    let no_shreds = Arc::new((Vec::new(), AtomicUsize::new(0)));
    let plain_side = ("tls off", &plain, &ids, Some(&plain_server));
    let secure_side = ("tls on", &secure_clients, &secure_ids, Some(&secure));
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    for workload in ["get-masked", "put"] {
        // Off, on, on, off: a drift of the machine over the four runs (other load, the stores
        // growing under put) weighs on both sides alike.
        let (mut off, mut on) = (0.0, 0.0);
        for (pass, (label, clients, ids, child)) in
            [plain_side, secure_side, secure_side, plain_side]
                .into_iter()
                .enumerate()
        {
            let f = op(
                workload,
                clients,
                Arc::clone(ids),
                Arc::new(Picker::uniform(ids.len())),
                Arc::clone(&no_shreds),
            )?;
            let cpu_before = child.and_then(Child::cpu_ticks);
            let stats = drive(opts.in_flight, opts.duration, opts.requests, f).await;
            let cpu = cpu_us(cpu_before, child.and_then(Child::cpu_ticks), stats.requests);
            *(if label == "tls on" { &mut on } else { &mut off }) += stats.per_second();
            rows.push(Row {
                name: format!("{workload} ({label}, pass {})", pass + 1),
                stats,
                server_cpu_us: cpu,
            });
        }
        ratios.push(on / f64::max(off, 1e-9));
    }
    Ok(TlsCost {
        rows,
        read_ratio: ratios[0],
        write_ratio: ratios[1],
    })
}
