//! `strongroom tls init`: certificates for TLS and mTLS, offline.

use std::path::PathBuf;

use clap::Subcommand;

use crate::{
    domain::Subject,
    tls::{CA_VALID_DAYS, InitOptions, LEAF_VALID_DAYS},
};

#[derive(Debug, Subcommand)]
pub(super) enum TlsCommand {
    /// Write a private CA (ca.pem, ca.key), a server certificate (server.pem, server.key) and
    /// one client certificate per --client (client-NS-NAME.pem/.key) into DIR (created 0700;
    /// keys 0600; existing files are never overwritten). The CA is valid 10 years, the others 1.
    Init {
        /// The directory to write to.
        dir: PathBuf,
        /// A DNS name or IP address of the server (repeat it) [default: localhost and
        /// 127.0.0.1].
        #[arg(long = "name")]
        names: Vec<String>,
        /// A client certificate for this subject (repeat it), e.g. svc:crm; its identity is
        /// the SAN URI spiffe://strongroom/svc/crm.
        #[arg(long = "client")]
        clients: Vec<String>,
    },
}

pub(super) fn tls(command: TlsCommand) -> Result<(), String> {
    match command {
        TlsCommand::Init {
            dir,
            names,
            clients,
        } => {
            let clients = clients
                .iter()
                .map(|c| Subject::parse(c, "--client").map_err(|e| format!("--client {c}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let written = crate::tls::init(&InitOptions {
                dir: dir.clone(),
                names,
                clients,
            })?;
            println!(
                "wrote into {} (CA valid {CA_VALID_DAYS} days, certificates {LEAF_VALID_DAYS}):",
                dir.display()
            );
            for path in written {
                println!("  {}", path.display());
            }
            let d = dir.display();
            println!(
                "server config:\n  tls_cert_file = \"{d}/server.pem\"\n  tls_key_file = \
                 \"{d}/server.key\"\n  client_ca_file = \"{d}/ca.pem\"   # for mTLS\n\
                 clients: --ca-cert {d}/ca.pem [--client-cert {d}/client-NS-NAME.pem \
                 --client-key {d}/client-NS-NAME.key] --addr https://HOST:PORT"
            );
            Ok(())
        }
    }
}
