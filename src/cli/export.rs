//! `strongroom export`: streams a collection for a purpose into a JSON Lines file, one record a
//! line: `{"id": "...", "version": 1, "fields": {"email": "pn_...", "address": null}}` (a
//! field the caller may not see is `null`; a field the record does not hold is absent). A
//! progress bar on stderr (only on a terminal), then a summary line.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    path::PathBuf,
};

use clap::Args;
use serde_json::{Map, Value, json};

use super::{Remote, connect, record::disclosure_name, status_text};
use crate::api::pb;

#[derive(Debug, Args)]
pub(super) struct ExportArgs {
    /// Collection.
    #[arg(long, default_value = "customers")]
    collection: String,
    /// Why you read it, e.g. analytics.
    #[arg(long)]
    purpose: String,
    /// Only these fields (repeat); all by default.
    #[arg(long = "field")]
    fields: Vec<String>,
    /// The JSON Lines file to write (written aside as FILE.partial, renamed when complete).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    remote: Remote,
}

pub(super) async fn export(args: ExportArgs) -> Result<(), String> {
    let ExportArgs {
        collection,
        purpose,
        fields,
        out,
        remote,
    } = args;
    let mut client = connect(&remote).await?;
    let mut stream = client
        .records
        .export_records(pb::ExportRecordsRequest {
            collection: collection.clone(),
            purpose: purpose.clone(),
            fields,
        })
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    // The extract is personal data: 0600, made anew, never through a link.
    let file = crate::files::create_private(&partial, true)?;
    let mut writer = std::io::BufWriter::new(file);
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} exporting [{bar:40}] {pos}/{len} records ({per_sec}, {eta} left)",
        )
        .map_err(|e| format!("progress bar: {e}"))?
        .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let (mut written, mut total) = (0u64, 0u64);
    // Per field: how many records got each disclosure.
    let mut outcomes: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
    let write_err = |e: std::io::Error| format!("cannot write {}: {e}", partial.display());
    loop {
        let record = match stream.message().await {
            Ok(Some(record)) => record,
            Ok(None) => break,
            Err(s) => {
                bar.abandon();
                return Err(format!(
                    "{} (after {written} records; the incomplete extract is in {})",
                    status_text(&s),
                    partial.display()
                ));
            }
        };
        if record.total != total {
            total = record.total;
            bar.set_length(total.max(record.scanned));
        }
        let mut values = Map::new();
        for f in &record.fields {
            let kind = disclosure_name(f.disclosure);
            *outcomes
                .entry(f.name.clone())
                .or_default()
                .entry(kind)
                .or_default() += 1;
            let value = match pb::Disclosure::try_from(f.disclosure) {
                Ok(pb::Disclosure::Masked | pb::Disclosure::Plain | pb::Disclosure::Pseudonym) => {
                    Value::String(f.value.clone())
                }
                Ok(pb::Disclosure::Unspecified | pb::Disclosure::Withheld) | Err(_) => Value::Null,
            };
            values.insert(f.name.clone(), value);
        }
        let line = json!({"id": record.id, "version": record.version, "fields": values});
        serde_json::to_writer(&mut writer, &line).map_err(|e| write_err(e.into()))?;
        writer.write_all(b"\n").map_err(write_err)?;
        written += 1;
        bar.set_length(total.max(record.scanned));
        bar.set_position(record.scanned);
    }
    bar.finish_and_clear();
    writer
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?
        .sync_all()
        .map_err(write_err)?;
    std::fs::rename(&partial, &out).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            partial.display(),
            out.display()
        )
    })?;
    let secs = started.elapsed().as_secs_f64();
    let by_field: Vec<String> = outcomes
        .iter()
        .map(|(field, by)| {
            let by: Vec<String> = by.iter().map(|(k, n)| format!("{k} {n}")).collect();
            format!("{field} ({})", by.join(", "))
        })
        .collect();
    if remote.json {
        println!(
            "{}",
            json!({"out": out.display().to_string(), "collection": collection, "purpose": purpose, "records": written, "total": total, "seconds": secs, "fields": outcomes})
        );
    } else {
        println!(
            "exported {written} of {total} {collection} records for {purpose} to {} in {secs:.1}s; {}",
            out.display(),
            by_field.join("; ")
        );
    }
    Ok(())
}
