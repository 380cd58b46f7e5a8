//! `strongroom import`: the real binary against a real vault. Every row is checked before
//! anything is written, bad rows are named by line without their values, the map ties each
//! line to its record, and an import killed part-way resumes without creating a row twice.

use std::{collections::HashSet, path::Path, process::Command};

use strongroom::storage::Keyspace;

use crate::support::*;

fn headers(vault: &Vault) -> usize {
    vault
        .store()
        .scan_prefix(Keyspace::Headers, b"")
        .unwrap()
        .len()
}

/// Runs `strongroom import` to the end: (success, stdout, stderr).
async fn import(vault: &Vault, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strongroom"));
    cmd.arg("import")
        .args(args)
        .env("STRONGROOM_ADDR", vault.addr())
        .env("STRONGROOM_TOKEN", token);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The map's rows: `(line, record id, error)`.
fn map_rows(path: &Path) -> Vec<(u64, String, String)> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].parse().unwrap(), r[1].to_owned(), r[2].to_owned())
        })
        .collect()
}

const CSV: &str = "name,email,phone,notes
Ada Lovelace,ada@example.com,+44 20 7946 0958,first
Grace Hopper,grace@example.com,,second
Bad Email,123-45-6789,+1 415 555 0100,third
Only,Two
Alan Turing,alan@example.com,+44 20 7946 0000,fifth
";

#[tokio::test]
async fn import_checks_every_row_first_and_names_bad_rows_by_line() {
    let vault = Vault::start_shared().await;
    let token = vault.token("svc:importer", &["role:writer"]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("customers.csv");
    std::fs::write(&file, CSV).unwrap();
    let before = headers(&vault);

    // One bad row: nothing is written, and the bad rows are listed by line, values unsaid.
    let (ok, _, err) = import(&vault, &token, &[file.to_str().unwrap()]).await;
    assert!(!ok, "{err}");
    assert!(
        err.contains("line 4: fields[1] (email): not a valid email address"),
        "{err}"
    );
    assert!(
        err.contains("line 5: not 4 columns like the header row"),
        "{err}"
    );
    assert!(err.contains("2 bad rows; nothing imported"), "{err}");
    assert!(!err.contains("123-45-6789"), "{err}");
    assert_eq!(headers(&vault), before);
    assert!(!dir.path().join("customers.csv.map.csv").exists());

    // With --skip-invalid the good rows go in, and the map says what became of each line.
    let (ok, out, err) = import(
        &vault,
        &token,
        &[file.to_str().unwrap(), "--skip-invalid", "--batch", "2"],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("imported 3 records"), "{out}");
    assert_eq!(headers(&vault), before + 3);
    let rows = map_rows(&dir.path().join("customers.csv.map.csv"));
    let lines: Vec<u64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(lines, [2, 3, 4, 5, 6]);
    assert!(rows[2].1.is_empty() && rows[2].2.contains("(email)"));
    assert!(rows[3].1.is_empty() && rows[3].2.contains("columns"));
    let mut support = vault.as_role("role:support").await;
    for (i, name) in [(0, "Ada Lovelace"), (1, "Grace Hopper"), (4, "Alan Turing")] {
        let r = get(&mut support, &rows[i].1, "support").await.unwrap();
        assert_eq!(value_of(&r, "name").unwrap().0, name);
    }
    assert!(!dir.path().join("customers.csv.map.csv.state").exists());
}

#[tokio::test]
async fn an_import_killed_part_way_resumes_without_creating_a_row_twice() {
    let vault = Vault::start_shared().await;
    let token = vault.token("svc:importer", &["role:writer"]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("people.jsonl");
    let rows = 4000u64;
    let text: String = (0..rows)
        .map(|i| {
            let letters: String = i
                .to_string()
                .bytes()
                .map(|b| char::from(b'a' + (b - b'0')))
                .collect();
            format!(
                "{{\"name\": \"Person {letters}\", \"email\": \"p{i}@example.com\", \"notes\": {i}}}\n"
            )
        })
        .collect();
    std::fs::write(&file, text).unwrap();
    let map = dir.path().join("people.map.csv");
    let state = dir.path().join("people.map.csv.state");
    let before = headers(&vault);
    let args = [
        file.to_str().unwrap(),
        "--map",
        map.to_str().unwrap(),
        "--batch",
        "20",
        "--in-flight",
        "1",
    ];

    // Killed (SIGKILL) once a few batches are in.
    let mut child = Command::new(env!("CARGO_BIN_EXE_strongroom"))
        .arg("import")
        .args(args)
        .env("STRONGROOM_ADDR", vault.addr())
        .env("STRONGROOM_TOKEN", &token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let done = |path: &Path| -> Option<u64> {
        let state: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        state["rows_done"].as_u64()
    };
    loop {
        if done(&state).is_some_and(|d| d >= 100) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import ended before it could be interrupted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let first = map_rows(&map);

    // As if it had died after the vault committed the last batch but before the map and the
    // state said so: the state one batch back, the map cut to match. The batch after it may
    // have been in flight too when it was killed, so the state says two were in flight (as a
    // run with `--in-flight 2` would), and the resume below runs one at a time.
    let mut saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let rows_done = saved["rows_done"].as_u64().unwrap();
    let back = rows_done - 20;
    let bytes = std::fs::read(&map).unwrap();
    let cut = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(usize::try_from(back).unwrap())
        .map(|(i, _)| i + 1)
        .unwrap();
    saved["rows_done"] = back.into();
    saved["map_bytes"] = cut.into();
    saved["in_flight"] = 2.into();
    std::fs::write(&state, serde_json::to_vec(&saved).unwrap()).unwrap();

    let (ok, out, err) = import(&vault, &token, &args).await;
    assert!(ok, "{out}{err}");
    assert!(
        err.contains(&format!("resuming: {back} rows already imported")),
        "{err}"
    );
    let rows_map = map_rows(&map);
    assert_eq!(rows_map.len() as u64, rows);
    let lines: Vec<u64> = rows_map.iter().map(|r| r.0).collect();
    assert_eq!(lines, (1..=rows).collect::<Vec<_>>());
    let ids: HashSet<&str> = rows_map.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(ids.len() as u64, rows, "an id per row, none twice");
    // The batch redone got the records the vault had created for it, not new ones.
    assert_eq!(rows_map[..first.len()], first[..]);
    assert_eq!(headers(&vault) as u64, before as u64 + rows);
    assert!(!state.exists());
}
