//! The ceilings each workload is measured against, in the same run: a plain tonic echo (served
//! by `strongroom bench-echo` in its own process), raw RocksDB writes and reads of the same
//! shape as a record's, and the raw crypto of one request.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tonic::{Request, Response, Status};

use super::CUSTOMER_FIELDS;
use crate::{
    api::pb::{
        self,
        echo_server::{Echo, EchoServer},
    },
    crypto::{self, Dek, DekContext, EpochId, FieldContext, Keyring},
    storage::{Batch, Keyspace, RocksStore, Store},
};

struct EchoApi;

#[tonic::async_trait]
impl Echo for EchoApi {
    async fn echo(
        &self,
        request: Request<pb::EchoRequest>,
    ) -> Result<Response<pb::EchoResponse>, Status> {
        let size = request.get_ref().response_size.min(1 << 20) as usize;
        Ok(Response::new(pb::EchoResponse {
            payload: vec![0x5a; size],
        }))
    }
}

/// Serves the echo service until the process is killed.
///
/// # Errors
/// A message if the address cannot be bound.
pub async fn serve_echo(listen: SocketAddr) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("echo listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(EchoApi))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await
        .map_err(|e| format!("echo server failed: {e}"))
}

/// Microseconds of one request's crypto: (write: DEK + wrap + 8 seals, read: unwrap + 8 opens).
pub(super) fn crypto_cost(iterations: u32) -> (f64, f64) {
    // A throwaway file keyring: the same provider the default vault uses.
    let Ok(dir) = tempfile::tempdir() else {
        return (0.0, 0.0);
    };
    let Ok(kek) = Keyring::open_file(dir.path().join("keys").join("keyring")) else {
        return (0.0, 0.0);
    };
    let id = [7u8; 16];
    let dctx = DekContext {
        record_id: &id,
        collection: "customers",
        record_version: 1,
        manifest: 0xff,
        honeytoken: false,
    };
    let mut sealed = Vec::new();
    let mut wrapped = None;
    let start = Instant::now();
    for _ in 0..iterations {
        let dek = Dek::generate();
        wrapped = crypto::wrap_dek(&kek, EpochId(1), &dek, &dctx).ok();
        sealed.clear();
        for (f, v) in CUSTOMER_FIELDS {
            let ctx = FieldContext {
                collection: "customers",
                record_id: &id,
                field: f,
                record_version: 1,
            };
            sealed.push(crypto::seal_field(&dek, &ctx, v));
        }
    }
    let write_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
    let Some(wrapped) = wrapped else {
        return (write_us, 0.0);
    };
    let start = Instant::now();
    for _ in 0..iterations {
        if let Ok(dek) = crypto::unwrap_dek(&kek, EpochId(1), &wrapped, &dctx) {
            for ((f, _), ct) in CUSTOMER_FIELDS.iter().zip(&sealed) {
                let ctx = FieldContext {
                    collection: "customers",
                    record_id: &id,
                    field: f,
                    record_version: 1,
                };
                let _ = crypto::open_field(&dek, &ctx, ct);
            }
        }
    }
    let read_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
    (write_us, read_us)
}

/// Microseconds of one field seal and one field open (a 16-byte value), for the guard bench.
pub fn field_cost(iterations: u32) -> (f64, f64) {
    let dek = Dek::generate();
    let id = [1u8; 16];
    let ctx = FieldContext {
        collection: "customers",
        record_id: &id,
        field: "email",
        record_version: 1,
    };
    let start = Instant::now();
    let mut ct = Vec::new();
    for _ in 0..iterations {
        ct = crypto::seal_field(&dek, &ctx, "ada@example.com!");
    }
    let seal = start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
    let start = Instant::now();
    for _ in 0..iterations {
        let _ = crypto::open_field(&dek, &ctx, &ct);
    }
    let open = start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
    (seal, open)
}

/// Raw RocksDB: synced 9-key batches (a record's shape) from `writers` threads for `duration`,
/// then cached point reads on one thread. Returns (writes/s, reads/s).
pub(super) fn rocksdb_ceiling(writers: usize, duration: Duration) -> Result<(f64, f64), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store = Arc::new(RocksStore::open(dir.path()).map_err(|e| e.to_string())?);
    let start = Instant::now();
    let handles: Vec<_> = (0..writers.max(1))
        .map(|w| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut n = 0u64;
                while start.elapsed() < duration {
                    let mut key = [0u8; 16];
                    key[..8].copy_from_slice(&(w as u64).to_be_bytes());
                    key[8..].copy_from_slice(&n.to_be_bytes());
                    let mut batch = Batch::new();
                    batch.put(Keyspace::Deks, key.to_vec(), vec![1u8; 110]);
                    for f in 0..8u8 {
                        let mut k = key.to_vec();
                        k.push(f);
                        batch.put(Keyspace::Records, k, vec![2u8; 60]);
                    }
                    if store.write(batch).is_err() {
                        break;
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let written: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    let write_rate = written as f64 / start.elapsed().as_secs_f64();
    let reads = 200_000u64;
    let start = Instant::now();
    for i in 0..reads {
        let mut key = [0u8; 16];
        key[8..].copy_from_slice(&(i % (written / writers.max(1) as u64).max(1)).to_be_bytes());
        let _ = store.get(Keyspace::Deks, &key);
    }
    let read_rate = reads as f64 / start.elapsed().as_secs_f64();
    Ok((write_rate, read_rate))
}
