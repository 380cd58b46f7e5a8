//! TLS and mTLS (issue 10): real handshakes on 127.0.0.1:0 with certificates written by the code
//! `strongroom tls init` runs. A client without the CA, a plaintext client, a certificate from
//! another CA, a missing certificate and a token presented under another subject's certificate
//! are all refused; the audit event of a read names the certificate it came over.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use strongroom::{
    api::pb,
    client::{self, ClientTls},
    config::{Config, Overrides},
    domain::Subject,
    server::{self, Running},
    tls::{InitOptions, init},
};
use tonic::Code;

use crate::support::{self, assert_code, customer, events_of, get};

/// Writes a CA, a server certificate for localhost/127.0.0.1 and client certificates for
/// `clients` into `dir`, as `strongroom tls init` does.
fn certificates(dir: &Path, clients: &[&str]) {
    init(&InitOptions {
        dir: dir.to_owned(),
        names: vec![],
        clients: clients
            .iter()
            .map(|c| Subject::parse(c, "client").unwrap())
            .collect(),
    })
    .unwrap();
}

/// The config lines of a TLS listener with the certificates in `certs`; mTLS with `mtls`.
fn tls_config(certs: &Path, mtls: bool) -> String {
    let d = certs.display();
    let mut text =
        format!("tls_cert_file = \"{d}/server.pem\"\ntls_key_file = \"{d}/server.key\"\n");
    if mtls {
        text.push_str(&format!("client_ca_file = \"{d}/ca.pem\"\n"));
    }
    text
}

/// Starts a vault on 127.0.0.1:0 in `dir` with the extra config `text`.
async fn start(dir: &Path, text: &str) -> Result<Running, String> {
    let over = Overrides {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.join("data")),
        keys_dir: None,
        policies_dir: Some(support::policies_dir()),
        store_url: None,
    };
    let config = Config::from_toml(text, over)?;
    server::start(config).await.map_err(|e| e.to_string())
}

fn https(running: &Running) -> String {
    format!("https://{}", running.addr)
}

/// TLS settings trusting the CA in `certs`, with the client certificate `client` (a file stem
/// such as `client-svc-crm`) if given.
fn trust(certs: &Path, client: Option<&str>) -> ClientTls {
    let files = client.map(|stem| {
        (
            certs.join(format!("{stem}.pem")),
            certs.join(format!("{stem}.key")),
        )
    });
    ClientTls::from_files(
        &certs.join("ca.pem"),
        files.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .unwrap()
}

async fn create(admin: &mut client::Client) -> String {
    support::create(admin, customer("tls")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_clients_without_its_ca_and_plaintext_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let (certs, other) = (tmp.path().join("certs"), tmp.path().join("other"));
    certificates(&certs, &[]);
    certificates(&other, &[]);
    let mut running = start(tmp.path(), &tls_config(&certs, false)).await.unwrap();
    let token = running.first_admin_token.take().unwrap().to_string();
    let addr = https(&running);

    // The server's certificate is checked against the CA the client trusts.
    let err = client::connect_with(&addr, &token, Some(&trust(&other, None)))
        .await
        .unwrap_err();
    assert!(err.contains("cannot connect"), "{err}");
    // A client speaking plaintext HTTP/2 to the TLS port gets nothing.
    let plain = format!("http://{}", running.addr);
    match client::connect(&plain, &token).await {
        Err(_) => {}
        Ok(mut c) => {
            let r = c.tokens.list_tokens(pb::ListTokensRequest::default()).await;
            assert!(r.is_err(), "a plaintext call was answered: {r:?}");
        }
    }
    // https without a CA, and a CA with http, are mistakes the client names.
    let err = client::channel(&addr, None).await.unwrap_err();
    assert!(err.contains("--ca-cert"), "{err}");
    let err = client::channel(&plain, Some(&trust(&certs, None)))
        .await
        .unwrap_err();
    assert!(err.contains("use https://"), "{err}");

    // With the right CA, the vault works; a bare host:port is https when a CA is given.
    let mut admin = client::connect_with(
        &running.addr.to_string(),
        &token,
        Some(&trust(&certs, None)),
    )
    .await
    .unwrap();
    let id = create(&mut admin).await;
    let read = get(&mut admin, &id, "support").await.unwrap();
    assert!(!read.fields.is_empty());
    // Without mTLS, no certificate is recorded.
    let events = events_of(&mut admin, "Records/GetRecord").await;
    assert!(
        events.iter().all(|e| e.certificate.is_empty()),
        "{events:?}"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_binds_each_token_to_its_certificates_subject() {
    let tmp = tempfile::tempdir().unwrap();
    let (certs, other) = (tmp.path().join("certs"), tmp.path().join("other"));
    certificates(&certs, &["user:admin", "svc:crm", "svc:billing"]);
    certificates(&other, &["svc:crm"]);
    let text = tls_config(&certs, true);
    let mut running = start(tmp.path(), &text).await.unwrap();
    let admin_token = running.first_admin_token.take().unwrap().to_string();
    let addr = https(&running);

    let mut admin = client::connect_with(
        &addr,
        &admin_token,
        Some(&trust(&certs, Some("client-user-admin"))),
    )
    .await
    .unwrap();
    let id = create(&mut admin).await;
    let crm_token = support::issue_token(&admin, "svc:crm", &["role:support"]).await;

    // No client certificate: health answers, everything else is refused.
    let bare = client::channel(&addr, Some(&trust(&certs, None)))
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(bare)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut uncertified = client::connect_with(&addr, &crm_token, Some(&trust(&certs, None)))
        .await
        .unwrap();
    let err = assert_code(
        get(&mut uncertified, &id, "support").await,
        Code::Unauthenticated,
    )
    .message()
    .to_owned();
    assert!(err.contains("requires a client certificate"), "{err}");

    // A certificate for the same subject from another CA fails the handshake (or its first call).
    // It trusts our server, and presents the other CA's svc:crm certificate.
    let foreign = ClientTls::from_files(
        &certs.join("ca.pem"),
        Some((
            &other.join("client-svc-crm.pem"),
            &other.join("client-svc-crm.key"),
        )),
    )
    .unwrap();
    match client::connect_with(&addr, &crm_token, Some(&foreign)).await {
        Err(e) => assert!(e.contains("cannot connect"), "{e}"),
        Ok(mut c) => {
            let r = get(&mut c, &id, "support").await;
            assert!(r.is_err(), "a certificate of another CA was accepted");
        }
    }

    // svc:crm's token over svc:billing's certificate: refused, without echoing the token.
    let mut stolen = client::connect_with(
        &addr,
        &crm_token,
        Some(&trust(&certs, Some("client-svc-billing"))),
    )
    .await
    .unwrap();
    let err = assert_code(
        get(&mut stolen, &id, "support").await,
        Code::Unauthenticated,
    )
    .message()
    .to_owned();
    assert!(
        err.contains("does not belong to the client certificate's subject"),
        "{err}"
    );
    assert!(!err.contains(&crm_token));

    // Over its own certificate it works, and the audit event names the certificate.
    let mut crm = client::connect_with(
        &addr,
        &crm_token,
        Some(&trust(&certs, Some("client-svc-crm"))),
    )
    .await
    .unwrap();
    let read = get(&mut crm, &id, "support").await.unwrap();
    assert!(!read.fields.is_empty());
    let reads = events_of(&mut admin, "Records/GetRecord").await;
    let ours: Vec<_> = reads.iter().filter(|e| e.subject == "svc:crm").collect();
    assert_eq!(ours.len(), 1, "{reads:?}");
    assert_eq!(ours[0].certificate, "spiffe://strongroom/svc/crm");
    assert!(
        reads.iter().all(|e| e.subject == "svc:crm"),
        "a refused call reached the handler: {reads:?}"
    );

    // The refusals are counted in the audit log like the others (written at shutdown), and the
    // chain, certificate fields included, verifies.
    drop((admin, crm, stolen, uncertified));
    running.shutdown().await.unwrap();
    let running = start(tmp.path(), &text).await.unwrap();
    let mut admin = client::connect_with(
        &https(&running),
        &admin_token,
        Some(&trust(&certs, Some("client-user-admin"))),
    )
    .await
    .unwrap();
    let refused = support::events(
        &mut admin,
        pb::EventFilter {
            outcome: "UNAUTHENTICATED".into(),
            ..Default::default()
        },
    )
    .await;
    for reason in [
        "token of another subject than the client certificate",
        "no client certificate",
    ] {
        assert!(
            refused.iter().any(|e| e.detail.contains(reason)),
            "{reason}: {refused:?}"
        );
    }
    assert!(refused.iter().all(|e| !e.detail.contains(&crm_token)));
    // Refusals over TLS name where they came from, as over plaintext.
    assert!(
        refused
            .iter()
            .all(|e| e.detail.contains("refused from 127.0.0.1 ")),
        "{refused:?}"
    );
    let verified = admin
        .audit
        .verify_log(pb::VerifyLogRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_off_loopback_and_a_readable_key_refuse_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    certificates(&certs, &[]);
    // Refused by the config, and by the server for a config moved off loopback afterwards.
    let over = Overrides {
        listen: Some("0.0.0.0:0".into()),
        data_dir: Some(tmp.path().join("data")),
        ..Overrides::default()
    };
    let err = Config::from_toml("", over).unwrap_err();
    assert!(err.contains("TLS is off"), "{err}");
    let mut config = Config::with(
        &tmp.path().join("data"),
        "127.0.0.1:0",
        &support::policies_dir(),
    )
    .unwrap();
    config.listen = "0.0.0.0:0".parse().unwrap();
    let err = server::start(config).await.unwrap_err().to_string();
    assert!(
        err.contains("not a loopback address") && err.contains("TLS is off"),
        "{err}"
    );

    // A key others can read is refused, naming the file and never showing it.
    let key: PathBuf = certs.join("server.key");
    let secret = std::fs::read_to_string(&key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = start(tmp.path(), &tls_config(&certs, false))
        .await
        .unwrap_err();
    assert!(
        err.starts_with("tls_key_file:") && err.contains("server.key"),
        "{err}"
    );
    let body: String = secret.lines().nth(1).unwrap().to_owned();
    assert!(!err.contains(&body));
    // A key that is not the certificate's is named too.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let swapped = tmp.path().join("swapped");
    certificates(&swapped, &[]);
    let text = tls_config(&certs, false).replace(
        &format!("{}/server.key", certs.display()),
        &format!("{}/server.key", swapped.display()),
    );
    let err = start(tmp.path(), &text).await.unwrap_err();
    assert!(err.starts_with("tls_key_file:"), "{err}");
}

/// The CLI binary: `tls init` writes 0600 keys and refuses to overwrite; its client commands
/// talk to a TLS vault with --ca-cert, and say what is missing without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_inits_certificates_and_talks_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let bin = env!("CARGO_BIN_EXE_strongroom");
    let run = |args: Vec<String>, env: Vec<(&'static str, String)>| {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(bin)
                .args(&args)
                .envs(env)
                .env_remove("STRONGROOM_CA_CERT")
                .env_remove("STRONGROOM_CLIENT_CERT")
                .env_remove("STRONGROOM_CLIENT_KEY")
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let init_args = vec![
        "tls".to_owned(),
        "init".to_owned(),
        certs.display().to_string(),
        "--client".to_owned(),
        "svc:crm".to_owned(),
    ];
    let (ok, out, err) = run(init_args.clone(), vec![]).await.unwrap();
    assert!(ok, "{out}{err}");
    for key in ["ca.key", "server.key", "client-svc-crm.key"] {
        let mode = std::fs::metadata(certs.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let ca_before = std::fs::read(certs.join("ca.key")).unwrap();
    let (ok, _, err) = run(init_args, vec![]).await.unwrap();
    assert!(!ok && err.contains("exists"), "{err}");
    assert_eq!(std::fs::read(certs.join("ca.key")).unwrap(), ca_before);

    let mut running = start(tmp.path(), &tls_config(&certs, false)).await.unwrap();
    let token = running.first_admin_token.take().unwrap().to_string();
    let addr = https(&running);
    let env = vec![("STRONGROOM_TOKEN", token.clone())];
    let list = |extra: &[&str]| {
        let mut args: Vec<String> = ["token", "list", "--addr", addr.as_str()]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let ca = certs.join("ca.pem").display().to_string();
    let (ok, out, err) = run(list(&["--ca-cert", &ca]), env.clone()).await.unwrap();
    assert!(ok, "{out}{err}");
    assert!(out.contains("user:admin"), "{out}");
    let (ok, _, err) = run(list(&[]), env).await.unwrap();
    assert!(!ok && err.contains("--ca-cert"), "{err}");
    running.shutdown().await.unwrap();
}

/// The Python gRPC client (grpcio, from the virtualenv `scripts/python-env.sh` makes) with TLS
/// credentials: `tests/python/get_record.py` generates its stubs from our proto, trusts the
/// private CA, presents svc:crm's client certificate and reads a record over mTLS, as a service
/// in another language would. Without the client certificate it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpcio_client_reads_over_mtls() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let env = std::process::Command::new(root.join("scripts/python-env.sh"))
        .output()
        .unwrap();
    assert!(
        env.status.success(),
        "scripts/python-env.sh failed: {}",
        String::from_utf8_lossy(&env.stderr)
    );
    let python = PathBuf::from(String::from_utf8(env.stdout).unwrap().trim());

    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    certificates(&certs, &["user:admin", "svc:crm"]);
    let mut running = start(tmp.path(), &tls_config(&certs, true)).await.unwrap();
    let admin_token = running.first_admin_token.take().unwrap().to_string();
    let mut admin = client::connect_with(
        &https(&running),
        &admin_token,
        Some(&trust(&certs, Some("client-user-admin"))),
    )
    .await
    .unwrap();
    let id = create(&mut admin).await;
    let crm_token = support::issue_token(&admin, "svc:crm", &["role:support"]).await;

    let read = |client_cert: bool| {
        let mut cmd = std::process::Command::new(&python);
        cmd.arg(root.join("tests/python/get_record.py"))
            .args(["--addr", &format!("localhost:{}", running.addr.port())])
            .arg("--ca")
            .arg(certs.join("ca.pem"))
            .args(["--id", &id, "--purpose", "support"])
            .env("STRONGROOM_TOKEN", &crm_token);
        if client_cert {
            cmd.arg("--cert")
                .arg(certs.join("client-svc-crm.pem"))
                .arg("--key")
                .arg(certs.join("client-svc-crm.key"));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "python client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let answer = tokio::task::block_in_place(|| read(true));
    assert_eq!(answer["id"], id.as_str(), "{answer}");
    let fields = answer["fields"].as_array().unwrap();
    let field = |name: &str| {
        fields
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {answer}"))
    };
    // role:support as shipped: the name in plaintext, the email masked, the SSN withheld.
    assert_eq!(field("name")["disclosure"], "DISCLOSURE_PLAIN", "{answer}");
    assert_eq!(
        field("email")["disclosure"],
        "DISCLOSURE_MASKED",
        "{answer}"
    );
    assert_eq!(
        field("ssn")["disclosure"],
        "DISCLOSURE_WITHHELD",
        "{answer}"
    );
    assert!(!field("name")["value"].as_str().unwrap().is_empty());

    let refused = tokio::task::block_in_place(|| read(false));
    assert_eq!(refused["error"], "UNAUTHENTICATED", "{refused}");
}
