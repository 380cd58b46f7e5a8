//! The workloads: clients per role, the records they use, preloading, and one request of each
//! workload.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use rand::Rng;

use super::{WORKLOADS, load::drive, zipf::Picker};
use crate::{
    api::pb,
    client::{self, Client},
};

/// The tokens' clients for each role, one per connection.
pub(super) struct Clients {
    pub(super) admin: Vec<Client>,
    pub(super) support: Vec<Client>,
    pub(super) marketing: Vec<Client>,
    /// The tokens the connections carry: admin, support, marketing.
    pub(super) tokens: [String; 3],
}

impl Clients {
    pub(super) async fn connect(
        addr: &str,
        admin_token: &str,
        connections: usize,
    ) -> Result<Self, String> {
        Self::connect_with(addr, admin_token, connections, None).await
    }

    /// As `connect`, over TLS with `tls`.
    pub(super) async fn connect_with(
        addr: &str,
        admin_token: &str,
        connections: usize,
        tls: Option<&client::ClientTls>,
    ) -> Result<Self, String> {
        let admin = client::connect_with(addr, admin_token, tls).await?;
        let issue = |subject: &str, role: &str| {
            let mut c = admin.clone();
            let (subject, role) = (subject.to_owned(), role.to_owned());
            async move {
                c.tokens
                    .create_token(pb::CreateTokenRequest {
                        subject,
                        roles: vec![role],
                        ..pb::CreateTokenRequest::default()
                    })
                    .await
                    .map(|r| r.into_inner().token)
                    .map_err(|s| format!("cannot issue a bench token: {}", s.message()))
            }
        };
        let tokens = [
            admin_token.to_owned(),
            issue("svc:bench-support", "role:support").await?,
            issue("svc:bench-marketing", "role:marketing").await?,
        ];
        Self::spread(&[addr], tokens, connections, tls).await
    }

    /// `connections` connections per role carrying `tokens` (admin, support, marketing),
    /// spread over the nodes at `addrs` (the i-th of each role to node i mod n).
    pub(super) async fn spread(
        addrs: &[&str],
        tokens: [String; 3],
        connections: usize,
        tls: Option<&client::ClientTls>,
    ) -> Result<Self, String> {
        let mut roles: [Vec<Client>; 3] = Default::default();
        for (role, token) in roles.iter_mut().zip(&tokens) {
            for (_, addr) in (0..connections.max(1)).zip(addrs.iter().cycle()) {
                role.push(client::connect_with(addr, token, tls).await?);
            }
        }
        let [admin, support, marketing] = roles;
        Ok(Self {
            admin,
            support,
            marketing,
            tokens,
        })
    }
}

fn customer(n: u64) -> Vec<pb::Field> {
    let letters: String = n
        .to_string()
        .bytes()
        .map(|b| char::from(b'a' + (b - b'0')))
        .collect();
    [
        ("name", format!("Ada {letters} Lovelace")),
        ("email", format!("ada.{n}@example.com")),
        ("phone", format!("+4420794{:05}", n % 100_000)),
        ("address", format!("{n} St James's Square, London")),
        ("date_of_birth", "1815-12-10".to_owned()),
        ("ssn", "123-45-6789".to_owned()),
        ("card_number", "4242424242424242".to_owned()),
        ("notes", format!("customer {n}: prefers email")),
    ]
    .into_iter()
    .map(|(name, value)| pb::Field {
        name: name.into(),
        value,
    })
    .collect()
}

/// Records per `BatchCreateRecords` call of a preload.
const PRELOAD_BATCH: usize = 200;

/// Ids per call of the `batch-get` workload, and records per call of `batch-put`.
pub(super) const BATCH_SIZE: usize = 16;

/// The ids a batch of creates returned; an error naming the first record refused.
fn created_ids(resp: pb::BatchCreateRecordsResponse) -> Result<Vec<String>, String> {
    resp.results
        .into_iter()
        .map(|r| match r.result {
            Some(pb::batch_create_result::Result::Created(c)) => Ok(c.id),
            Some(pb::batch_create_result::Result::Error(e)) => Err(e.message),
            None => Err("a batch result without an outcome".into()),
        })
        .collect()
}

pub(super) fn status(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Creates `count` records at full concurrency, with a progress line on stderr.
pub(super) async fn preload(
    clients: &Clients,
    count: usize,
    in_flight: usize,
    label: &str,
) -> Result<Vec<String>, String> {
    preload_into(clients, "customers", count, in_flight, label).await
}

/// Creates `count` customer-shaped records in `collection` (declared with the customers'
/// fields), `in_flight` at a time; returns their ids.
///
/// # Errors
/// A message naming the first failure.
pub(super) async fn preload_into(
    clients: &Clients,
    collection: &str,
    count: usize,
    in_flight: usize,
    label: &str,
) -> Result<Vec<String>, String> {
    let ids = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let done = Arc::new(AtomicU64::new(0));
    let ticker = {
        let (done, label) = (Arc::clone(&done), label.to_owned());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                eprint!(
                    "\r{label}: {}/{count} records",
                    done.load(Ordering::Relaxed)
                );
            }
        })
    };
    let admin = clients.admin.clone();
    let collection = collection.to_owned();
    let (ids2, done2) = (Arc::clone(&ids), Arc::clone(&done));
    // Batches of `PRELOAD_BATCH` records: request `n` creates records `n * PRELOAD_BATCH ..`.
    let batches = count.div_ceil(PRELOAD_BATCH) as u64;
    let in_flight = in_flight.div_ceil(PRELOAD_BATCH / 8).clamp(1, 16);
    let stats = drive(
        in_flight,
        Duration::from_secs(24 * 3600),
        Some(batches),
        move |n| {
            let mut c = admin[n as usize % admin.len()].clone();
            let (ids, done) = (Arc::clone(&ids2), Arc::clone(&done2));
            let collection = collection.clone();
            let first = n * PRELOAD_BATCH as u64;
            let last = (first + PRELOAD_BATCH as u64).min(count as u64);
            async move {
                let records = (first..last)
                    .map(|i| pb::CreateRecordRequest {
                        collection: collection.clone(),
                        fields: customer(i),
                        honeytoken: false,
                    })
                    .collect();
                let created = created_ids(
                    c.records
                        .batch_create_records(pb::BatchCreateRecordsRequest {
                            records,
                            ..pb::BatchCreateRecordsRequest::default()
                        })
                        .await
                        .map_err(|s| status(&s))?
                        .into_inner(),
                )?;
                done.fetch_add(created.len() as u64, Ordering::Relaxed);
                ids.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(created);
                Ok(())
            }
        },
    )
    .await;
    ticker.abort();
    eprintln!(
        "\r{label}: {count}/{count} records in {:.1}s",
        stats.elapsed.as_secs_f64()
    );
    if let Some(e) = stats.first_error {
        return Err(format!("preloading failed: {e}"));
    }
    let ids = std::mem::take(&mut *ids.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(ids)
}

/// `n` distinct ids drawn with `picker` (all of them if there are fewer).
fn distinct_ids(ids: &[String], picker: &Picker, n: usize) -> Vec<String> {
    let n = n.min(ids.len());
    let mut picked = std::collections::BTreeSet::new();
    let mut rng = rand::thread_rng();
    // A skewed picker repeats itself: after a bounded number of draws, fill in order.
    for _ in 0..n * 8 {
        if picked.len() == n {
            break;
        }
        picked.insert(picker.pick(&mut rng) % ids.len());
    }
    let mut next = 0;
    while picked.len() < n {
        picked.insert(next);
        next += 1;
    }
    picked.into_iter().map(|i| ids[i].clone()).collect()
}

/// One request of a workload, in flight.
pub(super) type OpFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// The operation of one workload, given the preloaded ids and a pool to shred.
pub(super) fn op(
    workload: &str,
    clients: &Clients,
    ids: Arc<Vec<String>>,
    picker: Arc<Picker>,
    shred_pool: Arc<(Vec<String>, AtomicUsize)>,
) -> Result<impl Fn(u64) -> OpFuture + Clone + Send + Sync + 'static, String> {
    #[derive(Clone, Copy)]
    enum Kind {
        BatchGet,
        BatchPut,
        Consent,
        Denied,
        Find,
        Full,
        Masked,
        Put,
        Shred,
        Update,
    }
    let wait_for_purge = workload == "shred-wait";
    let mix = workload == "mix";
    let fixed = match workload {
        "put" => Kind::Put,
        "batch-put" => Kind::BatchPut,
        "batch-get" => Kind::BatchGet,
        "get-full" => Kind::Full,
        "get-masked" | "mix" => Kind::Masked,
        "get-consent" => Kind::Consent,
        "get-denied" => Kind::Denied,
        "find" => Kind::Find,
        "update" => Kind::Update,
        "shred" | "shred-wait" => Kind::Shred,
        other => {
            return Err(format!(
                "unknown workload {other:?}; known: {}",
                WORKLOADS.join(", ")
            ));
        }
    };
    let workload = workload.to_owned();
    let (admin, support, marketing) = (
        clients.admin.clone(),
        clients.support.clone(),
        clients.marketing.clone(),
    );
    Ok(move |n: u64| {
        let kind = if mix {
            // 60% get-masked, 20% get-full, 15% put, 4% get-denied, 1% shred.
            match rand::thread_rng().gen_range(0..100) {
                0..60 => Kind::Masked,
                60..80 => Kind::Full,
                80..95 => Kind::Put,
                95..99 => Kind::Denied,
                _ => Kind::Shred,
            }
        } else {
            fixed
        };
        let conn = n as usize;
        // No records are preloaded for a workload that only creates (`put`).
        let picked = picker.pick(&mut rand::thread_rng()) % ids.len().max(1);
        let id = ids.get(picked).cloned();
        let batch = if matches!(kind, Kind::BatchGet) {
            distinct_ids(&ids, &picker, BATCH_SIZE)
        } else {
            Vec::new()
        };
        let (mut a, mut s, mut m) = (
            admin[conn % admin.len()].clone(),
            support[conn % support.len()].clone(),
            marketing[conn % marketing.len()].clone(),
        );
        let shred_pool = Arc::clone(&shred_pool);
        let workload = workload.clone();
        Box::pin(async move {
            let id = match (kind, id) {
                (Kind::Put | Kind::BatchPut | Kind::Shred, _) => String::new(),
                (_, Some(id)) => id,
                (_, None) => return Err(format!("{workload:?} needs preloaded records")),
            };
            let get = |purpose: &str| pb::GetRecordRequest {
                id: id.clone(),
                fields: vec![],
                purpose: purpose.into(),
            };
            let result = match kind {
                Kind::Denied => m.records.get_record(get("support")).await.map(|_| ()),
                Kind::Full => a.records.get_record(get("support")).await.map(|_| ()),
                Kind::Masked => s.records.get_record(get("support")).await.map(|_| ()),
                // The same fields decided the same way, for a purpose whose consent rules apply.
                Kind::Consent => s
                    .records
                    .get_record(get(super::consent::PURPOSE))
                    .await
                    .map(|_| ()),
                // Preloaded record `i` has the email `ada.{i}@example.com` (unless an update
                // workload replaced it: then the find matches nothing, and still costs a lookup).
                Kind::Find => s
                    .records
                    .find_records(pb::FindRecordsRequest {
                        collection: "customers".into(),
                        field: "email".into(),
                        value: format!("ada.{picked}@example.com"),
                        purpose: "support".into(),
                        fields: vec![],
                    })
                    .await
                    .map(|_| ()),
                Kind::Put => a
                    .records
                    .create_record(pb::CreateRecordRequest {
                        collection: "customers".into(),
                        fields: customer(n),
                        honeytoken: false,
                    })
                    .await
                    .map(|_| ()),
                Kind::BatchGet => s
                    .records
                    .batch_get_records(pb::BatchGetRecordsRequest {
                        ids: batch,
                        fields: vec![],
                        purpose: "support".into(),
                    })
                    .await
                    .and_then(|r| {
                        let failed =
                            r.into_inner()
                                .results
                                .into_iter()
                                .find_map(|r| match r.result {
                                    Some(pb::batch_get_result::Result::Record(_)) => None,
                                    Some(pb::batch_get_result::Result::Error(e)) => Some(e.message),
                                    None => Some("a batch result without an outcome".into()),
                                });
                        failed.map_or(Ok(()), |m| Err(tonic::Status::internal(m)))
                    }),
                Kind::BatchPut => a
                    .records
                    .batch_create_records(pb::BatchCreateRecordsRequest {
                        records: (0..BATCH_SIZE as u64)
                            .map(|i| pb::CreateRecordRequest {
                                collection: "customers".into(),
                                fields: customer(n * BATCH_SIZE as u64 + i),
                                honeytoken: false,
                            })
                            .collect(),
                        ..pb::BatchCreateRecordsRequest::default()
                    })
                    .await
                    .and_then(|r| {
                        created_ids(r.into_inner())
                            .map(|_| ())
                            .map_err(tonic::Status::internal)
                    }),
                Kind::Update => a
                    .records
                    .update_record(pb::UpdateRecordRequest {
                        id: id.clone(),
                        set: vec![
                            pb::Field {
                                name: "email".into(),
                                value: format!("new.{n}@example.com"),
                            },
                            pb::Field {
                                name: "phone".into(),
                                value: format!("+1415555{:04}", n % 10_000),
                            },
                        ],
                        clear: vec![],
                        expected_version: None,
                    })
                    .await
                    .map(|_| ()),
                Kind::Shred => {
                    let i = shred_pool.1.fetch_add(1, Ordering::Relaxed);
                    let Some(victim) = shred_pool.0.get(i).cloned() else {
                        return Err("the shred pool is used up: raise --records".into());
                    };
                    a.records
                        .delete_record(pb::DeleteRecordRequest {
                            id: victim,
                            wait_for_purge,
                        })
                        .await
                        .map(|_| ())
                }
            };
            result.map_err(|s| status(&s))
        })
            as std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
    })
}
