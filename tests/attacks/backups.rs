//! Shredding holds against backups (issue 9), tried as an operator restoring one would: stop
//! the vault, copy its dirs, start, shred, (rotate,) stop, put the copies back, start, read.
//!
//! - A copy of the data dir restored next to the live keys brings back every other record, and
//!   not the shredded one (its data key is gone from the key store): NOT_FOUND, and the
//!   restored ciphertexts are purged again.
//! - Once the epoch that wrapped the shredded record's key is destroyed, an old copy of the key
//!   store (with the data dir of the same time) yields nothing either.

use std::{path::Path, time::Duration};

use strongroom::{
    api::pb,
    client::Client,
    config::Config,
    server,
    storage::{Batch, Keyspace, RocksStore, Store},
};
use tonic::Code;

use crate::support::{
    self, Vault, assert_code, create, customer, field, files_containing, get, policies_dir,
    value_of,
};

/// `cp -a`: modes and owners kept, as an operator's backup tool would.
fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Replaces `live` with a copy of `backup`.
fn restore(backup: &Path, live: &Path) {
    std::fs::remove_dir_all(live).unwrap();
    copy_dir(backup, live);
}

/// A customer whose notes carry a canary that only this record holds.
fn canary_customer(tag: &str) -> (Vec<pb::Field>, String) {
    let notes = format!("zq{tag}canaryzq");
    let mut fields = customer(tag);
    fields.retain(|f| f.name != "notes");
    fields.push(field("notes", &notes));
    (fields, notes)
}

async fn shred(admin: &mut Client, id: &str) -> pb::ShredReceipt {
    admin
        .records
        .delete_record(pb::DeleteRecordRequest {
            id: id.into(),
            wait_for_purge: true,
        })
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap()
}

/// Events of `method` about `record`.
async fn events(admin: &mut Client, method: &str, record: &str) -> Vec<pb::AuditEvent> {
    let filter = pb::EventFilter {
        method: method.into(),
        record_id: record.into(),
        ..pb::EventFilter::default()
    };
    support::events(admin, filter).await
}

/// Starts a rotation and waits until it completed (the older epochs destroyed).
async fn rotate(admin: &mut Client) -> pb::KeyStatus {
    admin
        .keys
        .rotate_keys(pb::RotateKeysRequest {})
        .await
        .unwrap();
    for _ in 0..600 {
        let status = admin
            .keys
            .get_key_status(pb::GetKeyStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if !status.rotating {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the rotation did not end in 30 s");
}

/// Starts a vault over the vault's dirs, returning the error text if it refuses.
async fn try_start(vault: &Vault) -> Result<server::Running, String> {
    let config = Config::with(&vault.data_dir(), "127.0.0.1:0", &policies_dir()).unwrap();
    server::start(config).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_restored_data_dir_brings_back_every_record_but_the_shredded_one() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let mut records = Vec::new();
    for i in 0..5 {
        let (fields, notes) = canary_customer(&format!("r{}", char::from(b'a' + i)));
        records.push((create(&mut admin, fields).await, notes));
    }
    let (doomed, doomed_notes) = records.remove(2);
    let (_, doomed_ciphertexts) = vault
        .with_store(|store| support::stored(store, &doomed))
        .await;
    // The operator's backup of the data dir, taken while the vault is stopped.
    vault.stop().await;
    let backups = tempfile::tempdir().unwrap();
    let data_backup = backups.path().join("data");
    copy_dir(&vault.data_dir(), &data_backup);
    vault.restart().await;

    let mut admin = vault.admin().await;
    let receipt = shred(&mut admin, &doomed).await;
    assert!(receipt.unrecoverable_after_unix_ms > receipt.shredded_at_unix_ms);
    vault.stop().await;
    restore(&data_backup, &vault.data_dir());
    // The scan can see the restored ciphertexts before the vault starts over them.
    let ct = &doomed_ciphertexts[0].1;
    let needle = &ct[ct.len() - 32..];
    assert!(!files_containing(&vault.data_dir(), needle).is_empty());
    vault.restart().await;

    let mut admin = vault.admin().await;
    for (id, notes) in &records {
        let resp = get(&mut admin, id, "support").await.unwrap();
        assert_eq!(
            value_of(&resp, "notes"),
            Some((notes.as_str(), pb::Disclosure::Plain)),
            "every other record is back, whole"
        );
    }
    let shredded = assert_code(get(&mut admin, &doomed, "support").await, Code::NotFound);
    let never = assert_code(
        get(&mut admin, "0123456789abcdef0123456789abcdef", "support").await,
        Code::NotFound,
    );
    assert_eq!(shredded.message(), never.message());
    assert_eq!(
        events(&mut admin, "Records/Reconcile", &doomed).await.len(),
        1
    );
    // The start found the shredded record's data and shredded it again: its purge ran.
    let mut purged = false;
    for _ in 0..200 {
        if !events(&mut admin, "Records/Purge", &doomed)
            .await
            .is_empty()
        {
            purged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(purged, "the restored ciphertexts were purged");
    drop(admin);
    vault.stop().await;
    for (_, ct) in &doomed_ciphertexts {
        let hits = files_containing(&vault.data_dir(), &ct[ct.len() - 32..]);
        assert!(hits.is_empty(), "restored ciphertext still in {hits:?}");
    }
    for dir in [vault.data_dir(), vault.keys_dir()] {
        assert!(files_containing(&dir, doomed_notes.as_bytes()).is_empty());
    }
    eprintln!(
        "backups: data dir restored next to the live keys: {} records back, the shredded one \
         NOT_FOUND and its {} restored ciphertexts purged",
        records.len(),
        doomed_ciphertexts.len()
    );
}

#[tokio::test]
async fn once_its_epoch_is_destroyed_no_old_key_store_copy_yields_a_shredded_record() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let mut records = Vec::new();
    for i in 0..4 {
        let (fields, notes) = canary_customer(&format!("k{}", char::from(b'a' + i)));
        records.push((create(&mut admin, fields).await, notes));
    }
    let (doomed, _) = records.remove(0);
    // A backup of every part the operator may copy: the data dir and the key store.
    vault.stop().await;
    let backups = tempfile::tempdir().unwrap();
    let (data_backup, store_backup) = (backups.path().join("data"), backups.path().join("ks"));
    copy_dir(&vault.data_dir(), &data_backup);
    copy_dir(&vault.keys_dir().join("keystore"), &store_backup);
    let keyring_before = std::fs::read_to_string(vault.keys_dir().join("keyring")).unwrap();
    vault.restart().await;

    let mut admin = vault.admin().await;
    shred(&mut admin, &doomed).await;
    // Before the horizon, the old key-store copy still holds the shredded record's key: the
    // receipt's second time is not reached yet. A rotation (the horizon's, run now) destroys
    // the epoch it was wrapped under.
    let status = rotate(&mut admin).await;
    assert_eq!(status.epochs.len(), 1);
    assert_eq!(status.epochs[0].id, 2);
    assert!(!events(&mut admin, "Keys/DestroyEpoch", "").await.is_empty());
    vault.stop().await;
    let keyring_after = std::fs::read_to_string(vault.keys_dir().join("keyring")).unwrap();
    let epoch1 = keyring_before
        .lines()
        .find(|l| l.starts_with("epoch 1 "))
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        !keyring_after.contains(&epoch1),
        "epoch 1 is gone from the keyring"
    );

    // The old data dir and the old key store, next to the live keyring: refused, nothing read.
    let live = backups.path().join("live");
    std::fs::create_dir(&live).unwrap();
    copy_dir(&vault.data_dir(), &live.join("data"));
    copy_dir(&vault.keys_dir().join("keystore"), &live.join("ks"));
    restore(&data_backup, &vault.data_dir());
    restore(&store_backup, &vault.keys_dir().join("keystore"));
    let err = try_start(&vault).await.err().unwrap_or_default();
    assert!(err.contains("epoch 1"), "{err}");

    // The old data dir next to the live key store: every other record, rewrapped, reads.
    restore(&live.join("ks"), &vault.keys_dir().join("keystore"));
    vault.restart().await;
    let mut admin = vault.admin().await;
    for (id, notes) in &records {
        let resp = get(&mut admin, id, "support").await.unwrap();
        assert_eq!(
            value_of(&resp, "notes"),
            Some((notes.as_str(), pb::Disclosure::Plain))
        );
    }
    assert_code(get(&mut admin, &doomed, "support").await, Code::NotFound);
    eprintln!(
        "backups: after the rotation destroyed epoch 1, the old key-store copy is refused; the \
         old data dir with the live key store gives back {} records, not the shredded one",
        records.len()
    );
}

#[tokio::test]
async fn an_update_shreds_the_values_it_replaces() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let (fields, old_notes) = canary_customer("upd");
    let id = create(&mut admin, fields).await;
    vault.stop().await;
    let backups = tempfile::tempdir().unwrap();
    let data_backup = backups.path().join("data");
    copy_dir(&vault.data_dir(), &data_backup);
    vault.restart().await;
    let mut admin = vault.admin().await;
    admin
        .records
        .update_record(pb::UpdateRecordRequest {
            id: id.clone(),
            set: vec![field("notes", "replaced")],
            clear: vec!["ssn".into()],
            expected_version: None,
        })
        .await
        .unwrap();
    vault.stop().await;
    // Version 1's data key is gone: the restored copy of version 1 cannot be read.
    let live_data = backups.path().join("live");
    copy_dir(&vault.data_dir(), &live_data);
    restore(&data_backup, &vault.data_dir());
    vault.restart().await;
    let mut admin = vault.admin().await;
    let status = assert_code(get(&mut admin, &id, "support").await, Code::DataLoss);
    assert!(!status.message().contains(&old_notes));
    vault.stop().await;
    // The live data dir back: version 2 reads, without the replaced and cleared values.
    restore(&live_data, &vault.data_dir());
    vault.restart().await;
    let mut admin = vault.admin().await;
    let resp = get(&mut admin, &id, "support").await.unwrap();
    assert_eq!(
        value_of(&resp, "notes"),
        Some(("replaced", pb::Disclosure::Plain))
    );
    assert!(value_of(&resp, "ssn").is_none());
}

#[tokio::test]
async fn an_older_key_store_is_refused_never_taken_for_shreds() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let (fields, first_notes) = canary_customer("first");
    let first = create(&mut admin, fields).await;
    vault.stop().await;
    let backups = tempfile::tempdir().unwrap();
    let (old_store, live_store) = (backups.path().join("old"), backups.path().join("live"));
    copy_dir(&vault.keys_dir().join("keystore"), &old_store);
    vault.restart().await;
    let mut admin = vault.admin().await;
    let (fields, later_notes) = canary_customer("later");
    let later = create(&mut admin, fields).await;
    vault.stop().await;
    // Last night's key store put back (say, after losing the keys volume): the record created
    // since has no key in it, and it never shredded that record. Nothing may be shredded.
    copy_dir(&vault.keys_dir().join("keystore"), &live_store);
    restore(&old_store, &vault.keys_dir().join("keystore"));
    let err = try_start(&vault).await.err().unwrap_or_default();
    assert!(
        err.contains("1 records in the data dir have no data key"),
        "{err}"
    );
    assert!(err.contains("Nothing was changed"), "{err}");
    // The right key store back: both records read, whole.
    restore(&live_store, &vault.keys_dir().join("keystore"));
    vault.restart().await;
    let mut admin = vault.admin().await;
    for (id, notes) in [(&first, &first_notes), (&later, &later_notes)] {
        let resp = get(&mut admin, id, "support").await.unwrap();
        assert_eq!(
            value_of(&resp, "notes"),
            Some((notes.as_str(), pb::Disclosure::Plain))
        );
    }
}

/// A crash between an update's new data key and its commit leaves a key for a version no header
/// names. On the embedded store no other vault node can be committing it, so the next start
/// removes it: the key store holds one key per live record.
#[tokio::test]
async fn a_key_left_by_an_update_that_never_committed_is_removed_at_the_next_start() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let (fields, notes) = canary_customer("inflight");
    let id = create(&mut admin, fields).await;
    vault.stop().await;
    // The key the interrupted update wrote: the record's key entry at the next version.
    let (key, entry) = support::key_entries(&vault.keys_dir(), &id).pop().unwrap();
    let mut next = key.clone();
    let version = u64::from_be_bytes(key[16..].try_into().unwrap());
    next[16..].copy_from_slice(&(version + 1).to_be_bytes());
    {
        let store = RocksStore::open(&vault.keys_dir().join("keystore")).unwrap();
        let mut batch = Batch::new();
        batch.put(Keyspace::Deks, next, entry);
        store.write(batch).unwrap();
    }
    assert_eq!(support::key_entries(&vault.keys_dir(), &id).len(), 2);

    vault.restart().await;
    let mut admin = vault.admin().await;
    let resp = get(&mut admin, &id, "support").await.unwrap();
    assert_eq!(
        value_of(&resp, "notes"),
        Some((notes.as_str(), pb::Disclosure::Plain))
    );
    vault.stop().await;
    let left = support::key_entries(&vault.keys_dir(), &id);
    assert_eq!(
        left.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        vec![key]
    );
}

/// A shred on one vault node destroys the record's keys, an update on another writes a new
/// version's key and commits, and the shredding node dies before its own commit: the key store
/// recorded the shred, the data holds a readable record. The next start finishes the shred
/// (here: the marker written into a stopped vault's key store, as that race leaves it).
#[tokio::test]
async fn a_shred_that_began_and_lost_a_race_is_finished_at_the_next_start() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let (fields, notes) = canary_customer("begun");
    let id = create(&mut admin, fields).await;
    let (kept_fields, kept_notes) = canary_customer("kept");
    let kept = create(&mut admin, kept_fields).await;
    vault.stop().await;
    {
        let store = RocksStore::open(&vault.keys_dir().join("keystore")).unwrap();
        let mut marker = b"shredded/".to_vec();
        marker.extend_from_slice(&support::id_bytes(&id));
        let mut batch = Batch::new();
        batch.put(Keyspace::Meta, marker, 1_i64.to_be_bytes().to_vec());
        store.write(batch).unwrap();
    }

    vault.restart().await;
    let mut admin = vault.admin().await;
    assert_code(get(&mut admin, &id, "support").await, Code::NotFound);
    let resp = get(&mut admin, &kept, "support").await.unwrap();
    assert_eq!(
        value_of(&resp, "notes"),
        Some((kept_notes.as_str(), pb::Disclosure::Plain))
    );
    vault.stop().await;
    assert!(support::key_entries(&vault.keys_dir(), &id).is_empty());
    assert!(files_containing(&vault.data_dir(), notes.as_bytes()).is_empty());
}
