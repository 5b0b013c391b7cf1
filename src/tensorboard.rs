//! TensorBoard event files, so that a stock `tensorboard --logdir runs` can chart a run: an
//! [`EventWriter`] that appends scalars and markdown text to one
//! `events.out.tfevents.<unix-secs>.<hostname>.<pid>.<n>` file, and [`read_events`], a reader
//! that checks every record's checksums (for tests, and for tools that read a run back).
//!
//! The format is TensorFlow's: a file of TFRecords
//! (tensorflow/core/lib/io/record_writer.cc), each holding one serialized `Event` protobuf
//! (tensorflow/core/util/event.proto, tensorflow/core/framework/summary.proto and
//! tensor.proto). Only the fields this project writes or reads are declared below; a reader
//! built from these declarations skips the others.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

/// The `file_version` of the first record of every event file; TensorBoard reads files with
/// version 2 ("brain.Event:2") and up.
pub const FILE_VERSION: &str = "brain.Event:2";

/// `DataType::DT_STRING` of tensorflow/core/framework/types.proto.
pub const DT_STRING: i32 = 7;

/// `tensorflow.Event`: one record of an event file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch when the event was written.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The x-axis of TensorBoard's charts; in this project, emulator frames.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// Set in the first record of a file only (see [`FILE_VERSION`]).
    #[prost(string, tag = "3")]
    pub file_version: String,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary`: the values recorded at one step.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`: one tagged value, either a scalar (`simple_value`) or a tensor
/// whose meaning its `metadata` names (for text: plugin "text", a scalar `DT_STRING` tensor).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    /// The chart's name; TensorBoard groups charts by the part before the first '/'.
    #[prost(string, tag = "1")]
    pub tag: String,
    /// `optional`, as in the `oneof` it belongs to: a scalar 0.0 is still written.
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    #[prost(message, optional, tag = "8")]
    pub tensor: Option<TensorProto>,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

/// `tensorflow.SummaryMetadata`: which TensorBoard plugin displays a tensor value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `tensorflow.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    /// "text" for the text plugin.
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    /// The plugin's own serialized options; empty for text.
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorflow.TensorProto`, the string-tensor part of it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// A `tensorflow.DataType`, e.g. [`DT_STRING`].
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// No dimensions: a scalar.
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    /// The elements of a `DT_STRING` tensor.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

/// `tensorflow.TensorShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<Dim>,
}

/// `tensorflow.TensorShapeProto.Dim`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dim {
    #[prost(int64, tag = "1")]
    pub size: i64,
}

/// What went wrong with an event file; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TensorBoardError {
    #[error("cannot create TensorBoard event file {}: {error}", .path.display())]
    Create { path: PathBuf, error: io::Error },
    #[error("cannot write TensorBoard event file {}: {error}", .path.display())]
    Write { path: PathBuf, error: io::Error },
    #[error("cannot read TensorBoard event file {}: {error}", .path.display())]
    Read { path: PathBuf, error: io::Error },
    /// A record whose framing or checksums do not hold; `record` counts from 0 and `offset`
    /// is the byte where the record starts.
    #[error("TensorBoard event file {}: record {record} at byte {offset}: {problem}", .path.display())]
    Corrupt {
        path: PathBuf,
        record: usize,
        offset: usize,
        problem: Corruption,
    },
    #[error("TensorBoard event file {}: record {record} at byte {offset} is not an Event: {error}", .path.display())]
    Decode {
        path: PathBuf,
        record: usize,
        offset: usize,
        error: prost::DecodeError,
    },
}

/// How a record is damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    #[error("truncated: needs {needed} bytes, {left} left in the file")]
    Truncated { needed: usize, left: usize },
    #[error("length CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    LengthCrc { stored: u32, computed: u32 },
    #[error("data CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    DataCrc { stored: u32, computed: u32 },
}

/// Appends events to one new event file. Records are buffered: call [`EventWriter::flush`] to
/// make them visible to TensorBoard and to learn of write errors; dropping the writer flushes
/// too, ignoring errors.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

/// Numbers the files this process creates, as the `<n>` of their names.
static FILES_CREATED: AtomicU64 = AtomicU64::new(0);

impl EventWriter {
    /// Creates `dir` if needed and, in it, a new file named as TensorFlow and tensorboardX name
    /// theirs, `events.out.tfevents.<unix-secs>.<hostname>.<pid>.<n>` (`<n>` counts the files
    /// this process created), and writes the `file_version` record. Never overwrites a file;
    /// fails with [`TensorBoardError::Create`] when the directory or the file cannot be made.
    pub fn create(dir: &Path) -> Result<EventWriter, TensorBoardError> {
        let now = unix_seconds();
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .unwrap_or_else(|| "localhost".into());
        let n = FILES_CREATED.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "events.out.tfevents.{:010}.{hostname}.{}.{n}",
            now as u64,
            std::process::id()
        ));
        let create = || {
            fs::create_dir_all(dir)?;
            OpenOptions::new().write(true).create_new(true).open(&path)
        };
        let file = match create() {
            Ok(file) => file,
            Err(error) => return Err(TensorBoardError::Create { path, error }),
        };
        let mut writer = EventWriter {
            path,
            file: BufWriter::new(file),
        };
        writer.write_event(&Event {
            wall_time: now,
            file_version: FILE_VERSION.into(),
            ..Default::default()
        })?;
        Ok(writer)
    }

    /// The file this writer appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `value` under `tag` at `step` (emulator frames, in this project) as a
    /// `simple_value`, which is an f32: TensorBoard's scalar charts show it. The record is
    /// buffered; an error here or from [`EventWriter::flush`] means the file could not be
    /// written.
    pub fn add_scalar(&mut self, tag: &str, value: f64, step: i64) -> Result<(), TensorBoardError> {
        self.write_summary(
            step,
            SummaryValue {
                tag: tag.into(),
                simple_value: Some(value as f32),
                ..Default::default()
            },
        )
    }

    /// Records `markdown` under `tag` at `step` for TensorBoard's text plugin (tab "Text"),
    /// which renders it as markdown, tables included (see [`markdown_table`]).
    pub fn add_text(
        &mut self,
        tag: &str,
        markdown: &str,
        step: i64,
    ) -> Result<(), TensorBoardError> {
        self.write_summary(
            step,
            SummaryValue {
                tag: tag.into(),
                metadata: Some(SummaryMetadata {
                    plugin_data: Some(PluginData {
                        plugin_name: "text".into(),
                        content: Vec::new(),
                    }),
                }),
                tensor: Some(TensorProto {
                    dtype: DT_STRING,
                    tensor_shape: Some(TensorShapeProto::default()),
                    string_val: vec![markdown.as_bytes().to_vec()],
                }),
                ..Default::default()
            },
        )
    }

    /// Writes the buffered records to the file.
    pub fn flush(&mut self) -> Result<(), TensorBoardError> {
        self.file.flush().map_err(|error| TensorBoardError::Write {
            path: self.path.clone(),
            error,
        })
    }

    fn write_summary(&mut self, step: i64, value: SummaryValue) -> Result<(), TensorBoardError> {
        self.write_event(&Event {
            wall_time: unix_seconds(),
            step,
            summary: Some(Summary { value: vec![value] }),
            ..Default::default()
        })
    }

    fn write_event(&mut self, event: &Event) -> Result<(), TensorBoardError> {
        let record = frame(&event.encode_to_vec());
        self.file
            .write_all(&record)
            .map_err(|error| TensorBoardError::Write {
                path: self.path.clone(),
                error,
            })
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.file.flush();
    }
}

/// Reads every event of an event file, first to last, checking each record's framing and both
/// of its checksums. A truncated last record is an error here (TensorBoard itself waits for
/// the rest of it, as a file being written can end mid-record).
pub fn read_events(path: &Path) -> Result<Vec<Event>, TensorBoardError> {
    let bytes = fs::read(path).map_err(|error| TensorBoardError::Read {
        path: path.into(),
        error,
    })?;
    let mut events = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let record = events.len();
        let (data, len) =
            unframe(&bytes[offset..]).map_err(|problem| TensorBoardError::Corrupt {
                path: path.into(),
                record,
                offset,
                problem,
            })?;
        let event = Event::decode(data).map_err(|error| TensorBoardError::Decode {
            path: path.into(),
            record,
            offset,
            error,
        })?;
        events.push(event);
        offset += len;
    }
    Ok(events)
}

/// The `(step, value)` of every scalar tagged `tag`, in file order.
pub fn scalars(events: &[Event], tag: &str) -> Vec<(i64, f32)> {
    summary_values(events, tag)
        .filter_map(|(step, v)| Some((step, v.simple_value?)))
        .collect()
}

/// The `(step, text)` of every text summary tagged `tag`, in file order (strings that are not
/// UTF-8 are skipped).
pub fn texts(events: &[Event], tag: &str) -> Vec<(i64, String)> {
    summary_values(events, tag)
        .filter_map(|(step, v)| {
            let tensor = v.tensor.as_ref().filter(|t| t.dtype == DT_STRING)?;
            let text = String::from_utf8(tensor.string_val.first()?.clone()).ok()?;
            Some((step, text))
        })
        .collect()
}

fn summary_values<'a>(
    events: &'a [Event],
    tag: &'a str,
) -> impl Iterator<Item = (i64, &'a SummaryValue)> + 'a {
    events.iter().flat_map(move |e| {
        let values = e.summary.iter().flat_map(|s| &s.value);
        values
            .filter(move |v| v.tag == tag)
            .map(move |v| (e.step, v))
    })
}

/// A markdown table `| key | value |` with one row per pair, in order: a run's
/// hyperparameters for [`EventWriter::add_text`]. Pipes are escaped and line breaks become
/// spaces, so any value stays in its cell.
pub fn markdown_table(pairs: &[(String, String)]) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace(['\r', '\n'], " ");
    let mut table = String::from("| key | value |\n|---|---|\n");
    for (key, value) in pairs {
        table += &format!("| {} | {} |\n", cell(key), cell(value));
    }
    table
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// TFRecord's masked CRC32C, `((crc >> 15) | (crc << 17)) + 0xa282ead8` (`crc32c::Mask` in
/// tensorflow/core/lib/hash/crc32c.h): a CRC of data that holds CRCs is weak, so the stored
/// value is the CRC rotated right by 15 bits and offset by a constant.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: data length as u64 little-endian, masked CRC32C of those 8 bytes (u32 LE), the
/// data, masked CRC32C of the data (u32 LE).
fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut record = Vec::with_capacity(data.len() + 16);
    record.extend_from_slice(&len);
    record.extend_from_slice(&masked_crc(&len).to_le_bytes());
    record.extend_from_slice(data);
    record.extend_from_slice(&masked_crc(data).to_le_bytes());
    record
}

/// The data of the TFRecord at the start of `bytes`, and the record's length in bytes.
fn unframe(bytes: &[u8]) -> Result<(&[u8], usize), Corruption> {
    let need = |needed: usize| {
        let left = bytes.len();
        if left < needed {
            return Err(Corruption::Truncated { needed, left });
        }
        Ok(())
    };
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    need(12)?;
    let (stored, computed) = (u32_at(8), masked_crc(&bytes[..8]));
    if stored != computed {
        return Err(Corruption::LengthCrc { stored, computed });
    }
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    need(len.saturating_add(16))?;
    let data = &bytes[12..12 + len];
    let (stored, computed) = (u32_at(12 + len), masked_crc(data));
    if stored != computed {
        return Err(Corruption::DataCrc { stored, computed });
    }
    Ok((data, len + 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by the `tensorboard` Python package: tests/fixtures/make_tb_fixture.py.
    const PYTHON_FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tensorboard.tfevents"
    );

    #[test]
    fn masked_crc_matches_tensorboard() {
        // The CRC-32C check value (RFC 3720, B.4), then the first record of the Python fixture:
        // 8 length bytes, their masked CRC, 0x48 data bytes, their masked CRC.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let fixture = fs::read(PYTHON_FIXTURE).unwrap();
        let u32_at = |at: usize| u32::from_le_bytes(fixture[at..at + 4].try_into().unwrap());
        assert_eq!(fixture[..8], 0x48u64.to_le_bytes());
        assert_eq!(masked_crc(&fixture[..8]), u32_at(8));
        assert_eq!(masked_crc(&fixture[12..12 + 0x48]), u32_at(12 + 0x48));
        assert_eq!(frame(&fixture[12..12 + 0x48]), fixture[..16 + 0x48]);
    }

    #[test]
    fn reads_a_file_written_by_tensorboard() {
        let events = read_events(Path::new(PYTHON_FIXTURE)).unwrap();
        assert_eq!(events.len(), 6);
        assert_eq!(events[0].file_version, FILE_VERSION);
        assert!(events[0].wall_time > 1.7e9 && events[0].summary.is_none());
        assert_eq!(
            scalars(&events, "charts/episodic_return"),
            [(4000, 1.5), (8000, -21.0)]
        );
        assert_eq!(scalars(&events, "losses/td_loss"), [(8000, 0.25)]);
        assert_eq!(scalars(&events, "charts/epsilon"), [(12000, 0.0)]);
        assert_eq!(events[1].wall_time, 1_700_000_000.0);
        assert_eq!(
            texts(&events, "hparams/text"),
            [(
                0,
                "| key | value |\n|---|---|\n| game | Breakout |".to_string()
            )]
        );
        let text = &events[5].summary.as_ref().unwrap().value[0];
        let plugin = text
            .metadata
            .as_ref()
            .unwrap()
            .plugin_data
            .as_ref()
            .unwrap();
        assert_eq!(plugin.plugin_name, "text");
        assert_eq!(
            text.tensor.as_ref().unwrap().tensor_shape,
            Some(TensorShapeProto::default())
        );
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("runs/Pong");
        let mut writer = EventWriter::create(&run).unwrap();
        let name = writer
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        assert_eq!(
            name.split('.').nth(5),
            Some(&*std::process::id().to_string())
        );
        writer
            .add_scalar("charts/episodic_return", -20.5, 40_000)
            .unwrap();
        writer.add_scalar("charts/epsilon", 0.0, 0).unwrap();
        writer
            .add_scalar("charts/episodic_return", 3.25, 80_000)
            .unwrap();
        let table = markdown_table(&[("game".into(), "Pong".into()), ("lr".into(), "7e-4".into())]);
        writer.add_text("hparams", &table, 0).unwrap();
        writer.flush().unwrap();
        let path = writer.path().to_path_buf();
        drop(writer);

        let events = read_events(&path).unwrap();
        assert_eq!(events.len(), 5);
        assert_eq!(events[0].file_version, FILE_VERSION);
        assert!(events[1..]
            .iter()
            .all(|e| e.file_version.is_empty() && e.wall_time > 1.7e9));
        assert_eq!(
            scalars(&events, "charts/episodic_return"),
            [(40_000, -20.5), (80_000, 3.25)]
        );
        assert_eq!(scalars(&events, "charts/epsilon"), [(0, 0.0)]);
        assert_eq!(texts(&events, "hparams"), [(0, table)]);
    }

    /// Writes what the Python fixture holds and reads back the same summaries, field for field
    /// (text: the plugin name, the dtype and the scalar shape TensorBoard's `text_pb` sets).
    #[test]
    fn writes_the_summaries_tensorboard_writes() {
        let python = read_events(Path::new(PYTHON_FIXTURE)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        for event in &python[1..] {
            let value = &event.summary.as_ref().unwrap().value[0];
            match (value.simple_value, &value.tensor) {
                (Some(x), _) => writer.add_scalar(&value.tag, x.into(), event.step),
                (None, Some(t)) => {
                    let text = std::str::from_utf8(&t.string_val[0]).unwrap();
                    writer.add_text(&value.tag, text, event.step)
                }
                _ => panic!("unexpected value in the fixture: {value:?}"),
            }
            .unwrap();
        }
        writer.flush().unwrap();
        let ours = read_events(writer.path()).unwrap();
        assert_eq!(ours.len(), python.len());
        for (ours, python) in ours.iter().zip(&python).skip(1) {
            assert_eq!((ours.step, &ours.summary), (python.step, &python.summary));
        }
    }

    #[test]
    fn drop_flushes_and_files_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = EventWriter::create(dir.path()).unwrap();
        let second = EventWriter::create(dir.path()).unwrap();
        assert_ne!(first.path(), second.path());
        first.add_scalar("losses/td_loss", 0.5, 7).unwrap();
        let path = first.path().to_path_buf();
        drop(first);
        assert_eq!(
            scalars(&read_events(&path).unwrap(), "losses/td_loss"),
            [(7, 0.5)]
        );
    }

    #[test]
    fn a_flipped_byte_is_a_crc_error_naming_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        writer.add_scalar("a", 1.0, 1).unwrap();
        writer.add_scalar("b", 2.0, 2).unwrap();
        writer.flush().unwrap();
        let path = writer.path().to_path_buf();
        let good = fs::read(&path).unwrap();
        let starts = record_starts(&good);
        assert_eq!(starts.len(), 3);

        // The last data byte of record 2 (its value), then a byte of its length.
        for (at, want_length_crc) in [(good.len() - 5, false), (starts[2] + 1, true)] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            fs::write(&path, &bad).unwrap();
            let err = read_events(&path).unwrap_err();
            match &err {
                TensorBoardError::Corrupt {
                    record: 2,
                    offset,
                    problem,
                    ..
                } => {
                    assert_eq!(*offset, starts[2]);
                    match want_length_crc {
                        true => assert!(matches!(problem, Corruption::LengthCrc { .. }), "{err}"),
                        false => assert!(matches!(problem, Corruption::DataCrc { .. }), "{err}"),
                    }
                }
                _ => panic!("expected a CRC error in record 2, got {err}"),
            }
            let message = err.to_string();
            assert!(
                message.contains("record 2") && message.contains(&*path.to_string_lossy()),
                "{message}"
            );
        }

        fs::write(&path, &good[..good.len() - 1]).unwrap();
        let err = read_events(&path).unwrap_err();
        assert!(
            matches!(
                err,
                TensorBoardError::Corrupt {
                    record: 2,
                    problem: Corruption::Truncated { .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn create_names_the_path_it_could_not_create() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        fs::write(&not_a_dir, b"").unwrap();
        let err = EventWriter::create(&not_a_dir).err().unwrap();
        assert!(matches!(err, TensorBoardError::Create { .. }));
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "cannot create TensorBoard event file {}/events.out.tfevents.",
                not_a_dir.display()
            )),
            "{message}"
        );
    }

    #[test]
    fn markdown_table_keeps_each_value_in_its_cell() {
        let pairs = [
            ("game".to_string(), "\"Breakout\"".to_string()),
            ("odd".to_string(), "a|b\nc".to_string()),
        ];
        assert_eq!(
            markdown_table(&pairs),
            "| key | value |\n|---|---|\n| game | \"Breakout\" |\n| odd | a\\|b c |\n"
        );
        assert_eq!(markdown_table(&[]), "| key | value |\n|---|---|\n");
    }

    /// Byte offsets where each record of a well-formed file starts.
    fn record_starts(bytes: &[u8]) -> Vec<usize> {
        let mut starts = vec![];
        let mut at = 0;
        while at < bytes.len() {
            starts.push(at);
            at += unframe(&bytes[at..]).unwrap().1;
        }
        starts
    }
}
