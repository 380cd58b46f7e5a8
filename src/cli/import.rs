//! `strongroom import FILE`: loads existing customers into a collection from a CSV file (a
//! header row naming the fields, one record a row, an empty cell leaving the field unset) or a
//! JSON Lines file (one object a line, `{"name": "...", "email": "..."}`; `null` leaves a
//! field unset).
//!
//! First every row is checked as a create would check it (`BatchCreateRecords` with
//! `validate_only`: collection, fields, values, write permission) and the bad rows are listed by
//! line; unless `--skip-invalid`, nothing is written when one is bad. Then the rows go in
//! batches, a few in flight, with a progress bar (rate, time left). The map file gets one line
//! per row, in file order: `line,record_id,error`.
//!
//! Resuming: next to the map, `MAP.state` records the file's SHA-256, the batch size and how
//! many rows are done (and how long the map was then), after each batch. Each batch carries an
//! idempotency key made of the file's digest and its first row, so a batch sent before an
//! interruption and sent again on resume gets its first results back instead of creating its
//! records twice. Run the same command again to resume; the state file is removed at the end.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Seek, Write},
    path::{Path, PathBuf},
};

use clap::Args;
use futures_util::{StreamExt, stream::FuturesOrdered};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Remote, connect, status_text};
use crate::{api::pb, client::Client};

/// The input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Format {
    /// Comma-separated, with a header row of field names.
    Csv,
    /// JSON Lines: one object of field names to values a line.
    Jsonl,
}

#[derive(Debug, Args)]
pub(super) struct ImportArgs {
    /// The file: CSV with a header row, or JSON Lines.
    file: PathBuf,
    /// Collection.
    #[arg(long, default_value = "customers")]
    collection: String,
    /// The format [default: from the extension: .csv, .jsonl or .ndjson].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Import the valid rows even if some are bad (the bad ones are listed, and in the map).
    #[arg(long)]
    skip_invalid: bool,
    /// Records per call (at most the vault's `max_batch`).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Where the map from input line to record id goes [default: FILE.map.csv].
    #[arg(long)]
    map: Option<PathBuf>,
    /// The most bad rows listed (all are counted, and all are in the map).
    #[arg(long, default_value_t = 100)]
    show_bad: usize,
    #[command(flatten)]
    remote: Remote,
}

/// What a resumed import must match, and how far it got.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct State {
    format: String,
    file_sha256: String,
    collection: String,
    batch: usize,
    /// This import's own id, in its batches' idempotency keys: another import of the same
    /// file is another import.
    run: String,
    /// When it started (ms since the epoch): the vault keeps a batch's results for 7 days, so
    /// a resume must come sooner.
    started_ms: i64,
    /// Every row was checked (and, without --skip-invalid, found valid).
    validated: bool,
    /// Data rows (not lines) whose results are in the map.
    rows_done: u64,
    /// The map's length when `rows_done` was recorded.
    map_bytes: u64,
    /// The most batches a run of this import had in flight: a resumed run may find that many
    /// batches past `rows_done` already committed by the vault (0 in a state from before it
    /// was kept: the resumed run's own `--in-flight` then).
    #[serde(default)]
    in_flight: usize,
}

const STATE_FORMAT: &str = "strongroom-import-state/v1";

/// The oldest import that may be resumed: less than the 7 days the vault keeps the results of
/// an idempotent batch, with a day to spare.
const RESUME_WITHIN_MS: i64 = 6 * 24 * 3600 * 1000;

/// The largest `--batch` (the vault's own `max_batch` is at most this too).
const MAX_BATCH: usize = 10_000;

/// Per row of a batch: its line, and its record id or why it has none.
type Outcomes = Vec<(u64, Result<String, String>)>;

/// One data row: its line in the file, and its fields or why it cannot be read.
struct Row {
    line: u64,
    fields: Result<Vec<pb::Field>, String>,
}

/// The rows of the file, in order.
enum Rows {
    Csv {
        reader: csv::Reader<BufReader<File>>,
        headers: Vec<String>,
        record: csv::StringRecord,
    },
    Jsonl {
        lines: std::io::Lines<BufReader<File>>,
        line: u64,
    },
}

impl Rows {
    fn open(path: &Path, format: Format) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let buffered = BufReader::with_capacity(1 << 16, file);
        Ok(match format {
            Format::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(true)
                    .from_reader(buffered);
                let headers = reader
                    .headers()
                    .map_err(|e| format!("{}: the header row: {e}", path.display()))?
                    .iter()
                    .map(|h| h.trim().to_owned())
                    .collect::<Vec<_>>();
                if headers.iter().all(String::is_empty) {
                    return Err(format!(
                        "{}: the first row must name the fields",
                        path.display()
                    ));
                }
                Self::Csv {
                    reader,
                    headers,
                    record: csv::StringRecord::new(),
                }
            }
            Format::Jsonl => Self::Jsonl {
                lines: buffered.lines(),
                line: 0,
            },
        })
    }

    /// The next data row; `Err` only when the file cannot be read at all.
    fn next_row(&mut self) -> Result<Option<Row>, String> {
        match self {
            Self::Csv {
                reader,
                headers,
                record,
            } => match reader.read_record(record) {
                Ok(false) => Ok(None),
                Ok(true) => {
                    let line = record.position().map_or(0, csv::Position::line);
                    let fields = headers
                        .iter()
                        .zip(record.iter())
                        .filter(|(_, v)| !v.is_empty())
                        .map(|(name, value)| pb::Field {
                            name: name.clone(),
                            value: value.to_owned(),
                        })
                        .collect();
                    Ok(Some(Row {
                        line,
                        fields: Ok(fields),
                    }))
                }
                Err(e) => {
                    // A malformed row, not a malformed file: report it and go on.
                    let problem = match e.kind() {
                        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_owned(),
                        csv::ErrorKind::UnequalLengths { .. } => {
                            format!("not {} columns like the header row", headers.len())
                        }
                        csv::ErrorKind::Io(_)
                        | csv::ErrorKind::Seek
                        | csv::ErrorKind::Serialize(_)
                        | csv::ErrorKind::Deserialize { .. }
                        | _ => return Err(format!("cannot read the file: {e}")),
                    };
                    let line = e
                        .position()
                        .map(csv::Position::line)
                        .ok_or_else(|| format!("cannot read the file: {e}"))?;
                    Ok(Some(Row {
                        line,
                        fields: Err(problem),
                    }))
                }
            },
            Self::Jsonl { lines, line } => loop {
                let Some(text) = lines.next() else {
                    return Ok(None);
                };
                *line += 1;
                let text = match text {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        return Ok(Some(Row {
                            line: *line,
                            fields: Err("not valid UTF-8".into()),
                        }));
                    }
                    Err(e) => return Err(format!("cannot read the file: {e}")),
                };
                if text.trim().is_empty() {
                    continue;
                }
                return Ok(Some(Row {
                    line: *line,
                    fields: json_fields(&text),
                }));
            },
        }
    }
}

/// The fields of one JSON Lines object: strings (numbers as written), `null` for unset.
/// Errors name the problem, never a value.
fn json_fields(text: &str) -> Result<Vec<pb::Field>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON (column {})", e.column()))?;
    let serde_json::Value::Object(map) = value else {
        return Err("not a JSON object of field names to values".into());
    };
    let mut fields = Vec::with_capacity(map.len());
    for (name, value) in map {
        let value = match value {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(_)
            | serde_json::Value::Array(_)
            | serde_json::Value::Object(_) => {
                // A key is named only if it looks like a field name: a misplaced value is not
                // repeated.
                let shown = if name.len() <= 64
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    name
                } else {
                    "<not shown>".into()
                };
                return Err(format!(
                    "field {shown}: a value must be a string, a number or null"
                ));
            }
        };
        fields.push(pb::Field { name, value });
    }
    Ok(fields)
}

/// The file's SHA-256 and its number of lines.
fn digest(path: &Path) -> Result<(String, u64), String> {
    let mut file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    Ok((hex::encode(hasher.finalize()), lines))
}

/// One batch: the rows it covers, and the records sent for the readable ones.
struct Batch {
    /// Index of its first data row in the file (0-based).
    first_row: u64,
    rows: Vec<(u64, Option<String>)>,
    records: Vec<pb::CreateRecordRequest>,
}

impl Batch {
    /// Reads up to `size` data rows.
    fn read(
        rows: &mut Rows,
        first_row: u64,
        size: usize,
        collection: &str,
    ) -> Result<Option<Self>, String> {
        let mut batch = Self {
            first_row,
            rows: Vec::with_capacity(size),
            records: Vec::with_capacity(size),
        };
        while batch.rows.len() < size {
            let Some(row) = rows.next_row()? else {
                break;
            };
            match row.fields {
                Ok(fields) => {
                    batch.rows.push((row.line, None));
                    batch.records.push(pb::CreateRecordRequest {
                        collection: collection.to_owned(),
                        fields,
                        honeytoken: false,
                    });
                }
                Err(problem) => batch.rows.push((row.line, Some(problem))),
            }
        }
        Ok((!batch.rows.is_empty()).then_some(batch))
    }

    /// Sends the batch's records (with idempotency `key` unless empty, or only to check them)
    /// and gives each row's outcome. A replayed answer is an error unless `may_replay` (the
    /// batch was in flight when an earlier run stopped).
    async fn send(
        self,
        mut client: Client,
        key: String,
        validate_only: bool,
        may_replay: bool,
    ) -> Result<Outcomes, String> {
        let results = if self.records.is_empty() {
            Vec::new()
        } else {
            let resp = client
                .records
                .batch_create_records(pb::BatchCreateRecordsRequest {
                    records: self.records.clone(),
                    idempotency_key: key,
                    validate_only,
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if resp.replayed && !may_replay {
                return Err(format!(
                    "the vault already holds a batch of this import from row {}; nothing of \
                     it was created again",
                    self.first_row
                ));
            }
            resp.results
        };
        self.outcomes(results)
    }

    /// Per row: its line, and its record id or why it has none, from the vault's results for
    /// the records sent.
    fn outcomes(&self, results: Vec<pb::BatchCreateResult>) -> Result<Outcomes, String> {
        if results.len() != self.records.len() {
            return Err(format!(
                "the vault answered {} results for {} records",
                results.len(),
                self.records.len()
            ));
        }
        let mut results = results.into_iter();
        let mut out = Vec::with_capacity(self.rows.len());
        for (line, problem) in &self.rows {
            let outcome = match problem {
                Some(p) => Err(p.clone()),
                None => match results.next().and_then(|r| r.result) {
                    Some(pb::batch_create_result::Result::Created(c)) => Ok(c.id),
                    Some(pb::batch_create_result::Result::Error(e)) => {
                        Err(without_position(&e.message))
                    }
                    None => Err("no result".into()),
                },
            };
            out.push((*line, outcome));
        }
        Ok(out)
    }
}

/// A batch item's message without its position in the batch (`records[3].fields[1] (email):
/// ...` becomes `fields[1] (email): ...`): the map and the report name the line instead.
fn without_position(message: &str) -> String {
    match message.strip_prefix("records[") {
        Some(rest) => rest
            .find("].")
            .map_or_else(|| message.to_owned(), |i| rest[i + 2..].to_owned()),
        None => message.to_owned(),
    }
}

pub(super) async fn import(args: ImportArgs) -> Result<(), String> {
    let format = match args.format {
        Some(f) => f,
        None => match args.file.extension().and_then(|e| e.to_str()) {
            Some("csv") => Format::Csv,
            Some("jsonl" | "ndjson") => Format::Jsonl,
            _ => {
                return Err(format!(
                    "{}: give --format csv or --format jsonl",
                    args.file.display()
                ));
            }
        },
    };
    if !(1..=MAX_BATCH).contains(&args.batch) {
        return Err(format!("--batch: must be between 1 and {MAX_BATCH}"));
    }
    let map_path = args
        .map
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.map.csv", args.file.display())));
    let state_path = PathBuf::from(format!("{}.state", map_path.display()));
    let (file_sha256, lines) = digest(&args.file)?;
    let fresh = State {
        format: STATE_FORMAT.into(),
        file_sha256,
        collection: args.collection.clone(),
        batch: args.batch,
        run: hex::encode(rand::random::<[u8; 16]>()),
        started_ms: crate::vault::now_ms(),
        validated: false,
        rows_done: 0,
        map_bytes: 0,
        in_flight: 0,
    };
    let mut resuming = false;
    let mut state = match std::fs::read(&state_path) {
        Ok(bytes) => {
            let saved: State = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not an import state: {e}", state_path.display()))?;
            let same = saved.format == fresh.format
                && saved.file_sha256 == fresh.file_sha256
                && saved.collection == fresh.collection
                && saved.batch == fresh.batch;
            if !same {
                return Err(format!(
                    "{} belongs to another import (another file, collection or --batch); \
                     finish that one, or give another --map",
                    state_path.display()
                ));
            }
            if fresh.started_ms.saturating_sub(saved.started_ms) > RESUME_WITHIN_MS {
                return Err(format!(
                    "{} is from an import started more than 6 days ago: the vault no longer \
                     vouches for its batches, and resuming could create rows twice. Check the \
                     records against the map, then remove the state to start afresh",
                    state_path.display()
                ));
            }
            resuming = true;
            eprintln!(
                "resuming: {} rows already imported (map {})",
                saved.rows_done,
                map_path.display()
            );
            saved
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if map_path.exists() {
                return Err(format!(
                    "{} exists and no import is in progress for it; give another --map",
                    map_path.display()
                ));
            }
            fresh
        }
        Err(e) => return Err(format!("cannot read {}: {e}", state_path.display())),
    };
    let mut client = connect(&args.remote).await?;
    let started = std::time::Instant::now();

    if !state.validated {
        let bad = validate(&mut client, &args, format, lines).await?;
        if bad > 0 && !args.skip_invalid {
            return Err(format!(
                "{bad} bad rows; nothing imported. Fix them, or import the others with --skip-invalid"
            ));
        }
        state.validated = true;
        save_state(&state_path, &state)?;
    }

    // The map: cut back to what the state vouches for (a batch written after it is redone,
    // and replayed by the vault).
    let mut map = open_map(&map_path, state.map_bytes)?;
    let mut rows = Rows::open(&args.file, format)?;
    for _ in 0..state.rows_done {
        if rows.next_row()?.is_none() {
            return Err("the file has fewer rows than the import state says are done".into());
        }
    }
    let bar = progress(lines, "importing")?;
    bar.set_position(state.rows_done);
    let run = state.run.clone();
    // A run may have sent this many batches past what the state records before it stopped.
    state.in_flight = state.in_flight.max(args.in_flight.max(1));
    save_state(&state_path, &state)?;
    let replay_end = if state.rows_done > 0 || resuming {
        state
            .rows_done
            .saturating_add(state.in_flight.saturating_mul(args.batch) as u64)
    } else {
        0
    };
    let (mut created, mut failed) = (0u64, 0u64);
    let send = |batch: Batch| {
        let key = format!("import:{run}:{}:{}", batch.first_row, batch.rows.len());
        // Only a batch that was in flight when an earlier run stopped may come back replayed.
        let resumed = batch.first_row < replay_end;
        batch.send(client.clone(), key, false, resumed)
    };
    send_all(&mut rows, state.rows_done, &args, send, |done| {
        let outcomes = match done {
            Ok(outcomes) => outcomes,
            Err(e) => {
                bar.abandon();
                return Err(format!(
                    "{e}\n{} rows imported so far; run the same command again to resume",
                    state.rows_done
                ));
            }
        };
        for (line, outcome) in &outcomes {
            match outcome {
                Ok(id) => {
                    created += 1;
                    writeln!(map, "{line},{id},")
                }
                Err(problem) => {
                    failed += 1;
                    writeln!(map, "{line},,\"{}\"", problem.replace('"', "\"\""))
                }
            }
            .map_err(|e| format!("cannot write {}: {e}", map_path.display()))?;
        }
        map.flush()
            .and_then(|()| map.get_ref().sync_data())
            .map_err(|e| format!("cannot write {}: {e}", map_path.display()))?;
        state.rows_done += outcomes.len() as u64;
        state.map_bytes = map
            .get_ref()
            .metadata()
            .map_err(|e| format!("cannot read {}: {e}", map_path.display()))?
            .len();
        save_state(&state_path, &state)?;
        bar.set_position(state.rows_done);
        Ok(())
    })
    .await?;
    bar.finish_and_clear();
    std::fs::remove_file(&state_path)
        .map_err(|e| format!("cannot remove {}: {e}", state_path.display()))?;
    let secs = started.elapsed().as_secs_f64();
    if args.remote.json {
        println!(
            "{}",
            json!({"file": args.file.display().to_string(), "collection": args.collection, "created": created, "failed": failed, "rows": state.rows_done, "seconds": secs, "map": map_path.display().to_string()})
        );
    } else {
        println!(
            "imported {created} records into {} in {secs:.1}s ({:.0} records/s); {failed} rows \
             not imported; map of line to record id in {}",
            args.collection,
            created as f64 / secs.max(1e-9),
            map_path.display()
        );
    }
    Ok(())
}

/// Checks every row with `validate_only`; prints the bad ones (up to `--show-bad`); returns how
/// many there are.
async fn validate(
    client: &mut Client,
    args: &ImportArgs,
    format: Format,
    lines: u64,
) -> Result<u64, String> {
    let mut rows = Rows::open(&args.file, format)?;
    let bar = progress(lines, "checking")?;
    let (mut bad, mut checked) = (0u64, 0u64);
    let send = |batch: Batch| batch.send(client.clone(), String::new(), true, false);
    send_all(&mut rows, 0, args, send, |done| {
        let outcomes = done.map_err(|e| {
            bar.abandon();
            format!("checking the rows: {e}")
        })?;
        checked += outcomes.len() as u64;
        for (line, outcome) in outcomes {
            if let Err(problem) = outcome {
                bad += 1;
                if bad <= args.show_bad as u64 {
                    bar.suspend(|| eprintln!("line {line}: {problem}"));
                }
            }
        }
        bar.set_position(checked);
        Ok(())
    })
    .await?;
    bar.finish_and_clear();
    if bad > args.show_bad as u64 {
        eprintln!("... and {} more bad rows", bad - args.show_bad as u64);
    }
    eprintln!("checked {checked} rows: {bad} bad");
    Ok(bad)
}

/// Sends the rows from row `next_row` on, in batches, `in_flight` at a time (`send` sends one),
/// and hands each batch's answer to `take` in file order.
async fn send_all<Fut>(
    rows: &mut Rows,
    mut next_row: u64,
    args: &ImportArgs,
    send: impl Fn(Batch) -> Fut,
    mut take: impl FnMut(Result<Outcomes, String>) -> Result<(), String>,
) -> Result<(), String>
where
    Fut: Future<Output = Result<Outcomes, String>>,
{
    let mut pending = FuturesOrdered::new();
    loop {
        while pending.len() < args.in_flight.max(1) {
            let Some(batch) = Batch::read(rows, next_row, args.batch, &args.collection)? else {
                break;
            };
            next_row += batch.rows.len() as u64;
            pending.push_back(send(batch));
        }
        let Some(done) = pending.next().await else {
            return Ok(());
        };
        take(done)?;
    }
}

/// A progress bar on stderr (hidden unless stderr is a terminal) over about `lines` rows.
fn progress(lines: u64, verb: &str) -> Result<indicatif::ProgressBar, String> {
    use std::io::IsTerminal;
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(lines)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {verb} [{{bar:40}}] {{pos}}/~{{len}} rows ({{per_sec}}, {{eta}} left)"
        ))
        .map_err(|e| format!("progress bar: {e}"))?
        .progress_chars("=> "),
    );
    Ok(bar)
}

/// The map file, cut to `len` bytes, positioned at its end; a new one (0600) gets its header.
fn open_map(path: &Path, len: u64) -> Result<std::io::BufWriter<File>, String> {
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut file = if len == 0 {
        let mut f = crate::files::create_private(path, true)?;
        f.write_all(b"line,record_id,error\n").map_err(err)?;
        f
    } else {
        let f = crate::files::reopen_private(path)?;
        let have = f.metadata().map_err(err)?.len();
        if have < len {
            return Err(format!(
                "{} is shorter than the import state says it was; it was changed since",
                path.display()
            ));
        }
        f.set_len(len).map_err(err)?;
        f
    };
    file.seek(std::io::SeekFrom::End(0)).map_err(err)?;
    Ok(std::io::BufWriter::with_capacity(1 << 16, file))
}

/// Writes the state aside and renames it into place, synced.
fn save_state(path: &Path, state: &State) -> Result<(), String> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let err = |e: std::io::Error| format!("cannot write {}: {e}", tmp.display());
    let mut f = crate::files::create_private(&tmp, true)?;
    let bytes = serde_json::to_vec(state).map_err(|e| format!("import state: {e}"))?;
    f.write_all(&bytes).map_err(err)?;
    f.sync_data().map_err(err)?;
    std::fs::rename(&tmp, path)
        .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))?;
    match crate::files::parent_of(path) {
        Some(dir) => crate::files::sync_dir(&dir),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_positions_give_way_to_lines() {
        assert_eq!(
            without_position("records[3].fields[1] (email): not a valid email address"),
            "fields[1] (email): not a valid email address"
        );
        assert_eq!(without_position("no rule allows it"), "no rule allows it");
    }

    #[test]
    fn json_rows_take_strings_numbers_and_null() {
        let fields = json_fields(r#"{"name": "Ada", "notes": 12, "email": null}"#).unwrap();
        let pairs: Vec<(&str, &str)> = fields
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_str()))
            .collect();
        assert_eq!(pairs, [("name", "Ada"), ("notes", "12")]);
        let e = json_fields(r#"{"ssn": ["123-45-6789"]}"#).unwrap_err();
        assert!(!e.contains("123-45-6789"), "{e}");
        assert!(json_fields("[1]").is_err());
        let e = json_fields(r#"{"ssn": "123-45-6789""#).unwrap_err();
        assert!(!e.contains("123-45-6789"), "{e}");
    }
}
