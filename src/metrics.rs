//! Training metrics: `metrics.csv` in the run directory, appended as training goes (a resumed
//! run continues the same file from its checkpoint's counters); the same numbers as TensorBoard
//! scalars ([`Board`]), with CleanRL's tag names and emulator frames on the x-axis; and what
//! the user sees: an indicatif progress bar on a terminal, plain periodic log lines otherwise.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

use crate::tensorboard::{markdown_table, EventWriter, TensorBoardError};

/// Prints a line to stdout like `println!`, but a failed write (stdout on a full disk, or a
/// closed pipe) is ignored instead of panicking: a run's log must never take the run down.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::metrics::write_line(&mut std::io::stdout(), &format!($($arg)*))
    };
}

/// [`say!`] for stderr.
#[macro_export]
macro_rules! say_err {
    ($($arg:tt)*) => {
        $crate::metrics::write_line(&mut std::io::stderr(), &format!($($arg)*))
    };
}

/// Writes `msg` and a newline to `out`, ignoring errors (see [`say!`]).
pub fn write_line(out: &mut impl Write, msg: &str) {
    let _ = writeln!(out, "{msg}");
}

/// The CSV header; one [`Row`] per line.
pub const CSV_HEADER: &str =
    "wall_s,frames,steps,updates,episodes,fps,mean_return,epsilon,loss,q_mean,lr,updates_per_s,queue_fill,learner_busy,snapshot_age,replay_size,replay_ratio,priority_mean,is_weight_mean,policy_loss,value_loss,entropy,value_mean,rho_mean,remote_hosts,remote_fps,remote_in_flight,remote_bytes_per_transition,remote_snapshot_lag,remote_reconnects,inference_batch,inference_passes_per_s";

/// One metrics row. Frames are emulator frames over all actors; `fps` is frames per second
/// over the last interval; `mean_return` is the mean unclipped game score of the last 100
/// finished games (None before the first); `queue_fill` is the mean fraction of occupied queue
/// slots seen by the learner; `learner_busy` the fraction of wall time spent training.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub wall_s: f64,
    pub frames: u64,
    pub steps: u64,
    pub updates: u64,
    pub episodes: u64,
    pub fps: f64,
    pub mean_return: Option<f64>,
    pub epsilon: f64,
    pub loss: Option<f64>,
    pub q_mean: Option<f64>,
    pub lr: f64,
    pub updates_per_s: f64,
    pub queue_fill: f64,
    pub learner_busy: f64,
    /// Mean age, in frames, of the weight snapshot that acted for the data the learner took
    /// from the queue over the interval: frames between that snapshot's publication and the
    /// data's arrival at the learner (for n-step Q, a3c and impala, the weights that learn
    /// from it; dqn's replay adds the data's time in the memory).
    pub snapshot_age: Option<f64>,
    /// The learning rule's own numbers (replay memory size, measured replay ratio, mean
    /// priority and importance-sampling weight); empty CSV fields for rules without them.
    pub rule: crate::rules::RuleMetrics,
    /// Remote actor hosts, summed (`--listen` only; empty CSV fields otherwise).
    pub remote: Option<RemoteTotals>,
    /// `--inference learner`: the inference server over the interval (empty CSV fields
    /// otherwise).
    pub inference: Option<InferenceTotals>,
}

/// The learner's inference server over one metrics interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct InferenceTotals {
    /// Mean observations per forward pass (None: no pass).
    pub batch: Option<f64>,
    /// Forward passes per second.
    pub passes_per_s: f64,
}

/// The remote actor hosts of one metrics interval, together (see [`HostRow`] for each).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RemoteTotals {
    /// Hosts connected now.
    pub hosts: usize,
    /// Their frames per second, summed.
    pub fps: f64,
    /// Slots received from them and not yet in the queue.
    pub in_flight: u64,
    /// Bytes on the wire per transition (agent step) over the interval; None without data.
    pub bytes_per_transition: Option<f64>,
    /// Mean over connected hosts of the snapshot versions they lag behind the learner.
    pub snapshot_lag: Option<f64>,
    /// Reconnections over the run, summed.
    pub reconnects: u64,
}

/// One remote host over one metrics interval (a line of `hosts.csv`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostRow {
    pub host: u32,
    pub name: String,
    pub connected: bool,
    pub processes: u32,
    /// Emulator frames per second from this host over the interval.
    pub fps: f64,
    /// Slots received and not yet pushed into the queue (waiting for room).
    pub in_flight: u64,
    /// Wire bytes per transition over the interval (None when it sent none).
    pub bytes_per_transition: Option<f64>,
    /// Snapshot versions its actors lag behind the learner's newest.
    pub snapshot_lag: u64,
    pub reconnects: u32,
    pub restarts: u32,
}

impl HostRow {
    /// The row of host `now` over `dt` seconds since `before` (its counters then; None for a
    /// host new in this interval), with the learner at snapshot `version`.
    pub fn between(
        before: Option<&crate::remote::server::HostStats>,
        now: &crate::remote::server::HostStats,
        dt: f64,
        version: u64,
    ) -> HostRow {
        let (frames0, transitions0, bytes0) =
            before.map_or((0, 0, 0), |b| (b.frames, b.transitions, b.wire_bytes));
        let transitions = now.transitions.saturating_sub(transitions0);
        HostRow {
            host: now.host,
            name: now.name.clone(),
            connected: now.connected,
            processes: now.processes,
            fps: now.frames.saturating_sub(frames0) as f64 / dt.max(1e-9),
            in_flight: now.in_flight,
            bytes_per_transition: (transitions > 0)
                .then(|| now.wire_bytes.saturating_sub(bytes0) as f64 / transitions as f64),
            snapshot_lag: version.saturating_sub(now.snapshot_version),
            reconnects: now.reconnects,
            restarts: now.restarts,
        }
    }

    pub const CSV_HEADER: &'static str = "wall_s,frames,host,name,connected,processes,fps,transitions_in_flight,bytes_per_transition,snapshot_lag,reconnects,restarts";

    /// The `hosts.csv` line of this row at `wall_s` and the run's `frames`.
    pub fn to_csv(&self, wall_s: f64, frames: u64) -> String {
        format!(
            "{wall_s:.3},{frames},{},{},{},{},{:.1},{},{},{},{},{}",
            self.host,
            self.name.replace([',', '\n'], "_"),
            u8::from(self.connected),
            self.processes,
            self.fps,
            self.in_flight,
            opt(self.bytes_per_transition),
            self.snapshot_lag,
            self.reconnects,
            self.restarts
        )
    }
}

impl RemoteTotals {
    /// The totals of `rows`.
    pub fn of(rows: &[HostRow]) -> RemoteTotals {
        let connected: Vec<&HostRow> = rows.iter().filter(|r| r.connected).collect();
        let with_bytes: Vec<f64> = rows.iter().filter_map(|r| r.bytes_per_transition).collect();
        RemoteTotals {
            hosts: connected.len(),
            fps: rows.iter().map(|r| r.fps).sum(),
            in_flight: rows.iter().map(|r| r.in_flight).sum(),
            bytes_per_transition: (!with_bytes.is_empty())
                .then(|| with_bytes.iter().sum::<f64>() / with_bytes.len() as f64),
            snapshot_lag: (!connected.is_empty()).then(|| {
                connected.iter().map(|r| r.snapshot_lag as f64).sum::<f64>()
                    / connected.len() as f64
            }),
            reconnects: rows.iter().map(|r| u64::from(r.reconnects)).sum(),
        }
    }
}

/// `v` with `digits` decimals, or "-" when there is none yet (for people, not the CSV).
fn or_dash(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

impl Row {
    pub fn to_csv(&self) -> String {
        format!(
            "{:.3},{},{},{},{},{:.1},{},{:.5},{},{},{:.3e},{:.2},{:.4},{:.4},{},{},{},{},{},{},{},{},{},{},{},{}",
            self.wall_s,
            self.frames,
            self.steps,
            self.updates,
            self.episodes,
            self.fps,
            opt(self.mean_return),
            self.epsilon,
            opt(self.loss),
            opt(self.q_mean),
            self.lr,
            self.updates_per_s,
            self.queue_fill,
            self.learner_busy,
            self.snapshot_age
                .map(|a| format!("{a:.0}"))
                .unwrap_or_default(),
            self.rule
                .replay_size
                .map(|n| n.to_string())
                .unwrap_or_default(),
            opt(self.rule.replay_ratio),
            opt(self.rule.priority_mean),
            opt(self.rule.is_weight_mean),
            opt(self.rule.policy_loss),
            opt(self.rule.value_loss),
            opt(self.rule.entropy),
            opt(self.rule.value_mean),
            opt(self.rule.rho_mean),
            self.remote.as_ref().map_or(",,,,,".to_string(), |t| format!(
                "{},{:.1},{},{},{},{}",
                t.hosts,
                t.fps,
                t.in_flight,
                opt(t.bytes_per_transition),
                opt(t.snapshot_lag),
                t.reconnects
            )),
            self.inference.map_or(",".to_string(), |i| format!(
                "{},{:.2}",
                opt(i.batch),
                i.passes_per_s
            ))
        )
    }

    /// One human-readable line.
    pub fn summary(&self) -> String {
        format!(
            "frames {} | fps {:.0} | episodes {} | mean return {} | eps {:.3} | loss {} | q {} | queue {:.0}% | busy {:.0}%",
            self.frames, self.fps, self.episodes,
            or_dash(self.mean_return, 1),
            self.epsilon,
            or_dash(self.loss, 4),
            or_dash(self.q_mean, 3),
            100.0 * self.queue_fill, 100.0 * self.learner_busy
        )
    }
}

/// Appends rows to `metrics.csv`, writing the header when the file is new or empty.
pub struct CsvWriter {
    file: File,
}

impl CsvWriter {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        if file.metadata()?.len() == 0 {
            writeln!(file, "{CSV_HEADER}")?;
        }
        Ok(CsvWriter { file })
    }

    pub fn write(&mut self, row: &Row) -> std::io::Result<()> {
        writeln!(self.file, "{}", row.to_csv())?;
        self.file.flush()
    }
}

/// Mean of the last `capacity` game scores.
pub struct ReturnWindow {
    scores: VecDeque<f64>,
    capacity: usize,
}

impl ReturnWindow {
    pub fn new(capacity: usize) -> Self {
        ReturnWindow {
            scores: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub fn push(&mut self, score: f64) {
        if self.scores.len() == self.capacity {
            self.scores.pop_front();
        }
        self.scores.push_back(score);
    }

    /// Whether the window holds `capacity` scores.
    pub fn is_full(&self) -> bool {
        self.scores.len() == self.capacity
    }

    pub fn mean(&self) -> Option<f64> {
        (!self.scores.is_empty())
            .then(|| self.scores.iter().sum::<f64>() / self.scores.len() as f64)
    }
}

/// Progress shown to the user: a bar on a terminal, log lines otherwise.
pub enum Progress {
    Bar(ProgressBar),
    Lines,
}

impl Progress {
    /// A bar from `start` to `max_frames` frames when stdout is a terminal.
    pub fn new(start: u64, max_frames: u64) -> Self {
        if std::io::stdout().is_terminal() {
            let bar = ProgressBar::new(max_frames);
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} frames {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_position(start);
            Progress::Bar(bar)
        } else {
            Progress::Lines
        }
    }

    pub fn update(&self, row: &Row) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(row.frames);
                bar.set_message(format!(
                    "| fps {:.0} | ep {} | return {} | eps {:.3} | loss {}",
                    row.fps,
                    row.episodes,
                    or_dash(row.mean_return, 1),
                    row.epsilon,
                    or_dash(row.loss, 4)
                ));
            }
            Progress::Lines => crate::say!("{}", row.summary()),
        }
    }

    /// Prints a message without breaking the bar.
    pub fn println(&self, msg: &str) {
        match self {
            Progress::Bar(bar) => bar.println(msg),
            Progress::Lines => crate::say!("{msg}"),
        }
    }

    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish();
        }
    }
}

/// TensorBoard event file of a run (a new file per start; TensorBoard merges a resumed run's
/// files by step). Every step is emulator frames over all actors. Tags, after CleanRL:
/// `charts/episodic_return` and `charts/episode_length` (frames) per finished game;
/// `charts/epsilon`, `charts/learning_rate`, `charts/fps`, `charts/mean_return`,
/// `losses/td_loss`, `losses/q_values` (mean max-Q), `perf/queue_fill`, `perf/learner_busy`,
/// `perf/updates_per_s`, `charts/snapshot_age` per metrics row, with the rule's own:
/// `replay/*` (dqn), `losses/loss` (the total), `losses/policy_loss`, `losses/value_loss`,
/// `losses/entropy`, `charts/value_mean` (actor-critic) and `losses/rho_mean` (impala);
/// `eval/mean_return`, `eval/median_return` and
/// `eval/std_return` per periodic evaluation; the hyperparameters as the text `hparams`.
pub struct Board {
    writer: EventWriter,
}

impl Board {
    /// Creates the event file in `dir` and writes the hyperparameters at step `frames`.
    pub fn create(
        dir: &Path,
        hparams: &[(String, String)],
        frames: u64,
    ) -> Result<Board, TensorBoardError> {
        let mut writer = EventWriter::create(dir)?;
        writer.add_text("hparams", &markdown_table(hparams), frames as i64)?;
        writer.flush()?;
        Ok(Board { writer })
    }

    /// A finished game: unclipped score and length in frames, at `frames`.
    pub fn episode(
        &mut self,
        frames: u64,
        score: f64,
        length: u64,
    ) -> Result<(), TensorBoardError> {
        let step = frames as i64;
        self.writer
            .add_scalar("charts/episodic_return", score, step)?;
        self.writer
            .add_scalar("charts/episode_length", length as f64, step)
    }

    /// A periodic evaluation (`eval/mean_return`, `eval/median_return`, `eval/std_return`) at
    /// the frames of the evaluated snapshot; flushes.
    pub fn eval(&mut self, e: &crate::ipc::EvalScores) -> Result<(), TensorBoardError> {
        let step = e.frames as i64;
        let s = &e.stats;
        self.writer.add_scalar("eval/mean_return", s.mean, step)?;
        self.writer
            .add_scalar("eval/median_return", s.median, step)?;
        self.writer.add_scalar("eval/std_return", s.std, step)?;
        self.writer.flush()
    }

    /// One metrics row; flushes, so TensorBoard sees it.
    pub fn row(&mut self, r: &Row) -> Result<(), TensorBoardError> {
        let step = r.frames as i64;
        let w = &mut self.writer;
        w.add_scalar("charts/epsilon", r.epsilon, step)?;
        w.add_scalar("charts/learning_rate", r.lr, step)?;
        w.add_scalar("charts/fps", r.fps, step)?;
        if let Some(m) = r.mean_return {
            w.add_scalar("charts/mean_return", m, step)?;
        }
        // An actor-critic's loss is its total (policy, value, entropy: tagged below) and its
        // mean "Q" is V(s) (charts/value_mean).
        let actor_critic = r.rule.policy_loss.is_some();
        if let Some(l) = r.loss {
            let tag = if actor_critic {
                "losses/loss"
            } else {
                "losses/td_loss"
            };
            w.add_scalar(tag, l, step)?;
        }
        if let (Some(q), false) = (r.q_mean, actor_critic) {
            w.add_scalar("losses/q_values", q, step)?;
        }
        w.add_scalar("perf/queue_fill", r.queue_fill, step)?;
        w.add_scalar("perf/learner_busy", r.learner_busy, step)?;
        w.add_scalar("perf/updates_per_s", r.updates_per_s, step)?;
        let rule = [
            ("charts/snapshot_age", r.snapshot_age),
            ("replay/size", r.rule.replay_size.map(|n| n as f64)),
            ("replay/ratio", r.rule.replay_ratio),
            ("replay/priority_mean", r.rule.priority_mean),
            ("replay/is_weight_mean", r.rule.is_weight_mean),
            ("losses/policy_loss", r.rule.policy_loss),
            ("losses/value_loss", r.rule.value_loss),
            ("losses/entropy", r.rule.entropy),
            ("charts/value_mean", r.rule.value_mean),
            ("losses/rho_mean", r.rule.rho_mean),
        ];
        for (tag, v) in rule {
            if let Some(v) = v {
                w.add_scalar(tag, v, step)?;
            }
        }
        if let Some(i) = &r.inference {
            if let Some(b) = i.batch {
                w.add_scalar("perf/inference_batch", b, step)?;
            }
            w.add_scalar("perf/inference_passes_per_s", i.passes_per_s, step)?;
        }
        if let Some(t) = &r.remote {
            w.add_scalar("remote/hosts", t.hosts as f64, step)?;
            w.add_scalar("remote/fps", t.fps, step)?;
            w.add_scalar("remote/in_flight", t.in_flight as f64, step)?;
            w.add_scalar("remote/reconnects", t.reconnects as f64, step)?;
            if let Some(b) = t.bytes_per_transition {
                w.add_scalar("remote/bytes_per_transition", b, step)?;
            }
            if let Some(l) = t.snapshot_lag {
                w.add_scalar("remote/snapshot_lag", l, step)?;
            }
        }
        w.flush()
    }

    /// One remote host's numbers at `frames` (tags `hosts/<n>/...`, n its number in the run).
    pub fn host(&mut self, frames: u64, h: &HostRow) -> Result<(), TensorBoardError> {
        let step = frames as i64;
        let w = &mut self.writer;
        let tag = |name: &str| format!("hosts/{}/{name}", h.host);
        w.add_scalar(&tag("fps"), h.fps, step)?;
        w.add_scalar(&tag("transitions_in_flight"), h.in_flight as f64, step)?;
        w.add_scalar(&tag("snapshot_lag"), h.snapshot_lag as f64, step)?;
        w.add_scalar(&tag("reconnects"), f64::from(h.reconnects), step)?;
        if let Some(b) = h.bytes_per_transition {
            w.add_scalar(&tag("bytes_per_transition"), b, step)?;
        }
        Ok(())
    }
}

/// Appends [`HostRow`]s to `hosts.csv` in the run directory.
pub struct HostsCsv {
    file: File,
}

impl HostsCsv {
    pub fn open(run_dir: &Path) -> std::io::Result<Self> {
        let path = run_dir.join("hosts.csv");
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        if file.metadata()?.len() == 0 {
            writeln!(file, "{}", HostRow::CSV_HEADER)?;
        }
        Ok(HostsCsv { file })
    }

    pub fn write(&mut self, row: &HostRow, wall_s: f64, frames: u64) -> std::io::Result<()> {
        writeln!(self.file, "{}", row.to_csv(wall_s, frames))?;
        self.file.flush()
    }
}

/// Where the learner's records go: `metrics.csv` ([`CsvWriter`]), TensorBoard ([`Board`]),
/// `hosts.csv` ([`HostsCsv`]). Each implements what it records; errors name the file.
pub trait Logger {
    /// A finished training game: its unclipped score and length in frames, at `frames`.
    fn episode(&mut self, _frames: u64, _score: f64, _length: u64) -> anyhow::Result<()> {
        Ok(())
    }

    /// A periodic evaluation (`--eval-every`).
    fn eval(&mut self, _scores: &crate::ipc::EvalScores) -> anyhow::Result<()> {
        Ok(())
    }

    /// One remote host's numbers for the interval ending at `wall_s` seconds and `frames`.
    fn host(&mut self, _wall_s: f64, _frames: u64, _row: &HostRow) -> anyhow::Result<()> {
        Ok(())
    }

    /// The metrics row ending an interval.
    fn row(&mut self, _row: &Row) -> anyhow::Result<()> {
        Ok(())
    }
}

impl Logger for CsvWriter {
    fn row(&mut self, row: &Row) -> anyhow::Result<()> {
        use anyhow::Context;
        self.write(row).context("writing metrics.csv")
    }
}

impl Logger for HostsCsv {
    fn host(&mut self, wall_s: f64, frames: u64, row: &HostRow) -> anyhow::Result<()> {
        use anyhow::Context;
        self.write(row, wall_s, frames).context("writing hosts.csv")
    }
}

impl Logger for Board {
    fn episode(&mut self, frames: u64, score: f64, length: u64) -> anyhow::Result<()> {
        Board::episode(self, frames, score, length).map_err(board_error)
    }

    fn eval(&mut self, scores: &crate::ipc::EvalScores) -> anyhow::Result<()> {
        Board::eval(self, scores).map_err(board_error)
    }

    fn host(&mut self, _wall_s: f64, frames: u64, row: &HostRow) -> anyhow::Result<()> {
        Board::host(self, frames, row).map_err(board_error)
    }

    fn row(&mut self, row: &Row) -> anyhow::Result<()> {
        Board::row(self, row).map_err(board_error)
    }
}

fn board_error(e: TensorBoardError) -> anyhow::Error {
    anyhow::Error::new(e).context("writing the TensorBoard event file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_keeps_the_last_scores() {
        let mut w = ReturnWindow::new(3);
        assert_eq!(w.mean(), None);
        for s in [1.0, 2.0, 3.0, 10.0] {
            w.push(s);
        }
        assert_eq!(w.mean(), Some(5.0));
    }

    #[test]
    fn csv_has_one_field_per_column() {
        let row = Row {
            frames: 10,
            mean_return: None,
            loss: Some(0.5),
            ..Default::default()
        };
        assert_eq!(
            row.to_csv().split(',').count(),
            CSV_HEADER.split(',').count()
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        CsvWriter::open(&path).unwrap().write(&row).unwrap();
        CsvWriter::open(&path).unwrap().write(&row).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "one header, two rows: {text}");
    }
}
