//! Restart plans, as in Erlang's `director`: a list of elements consumed one per exit of a
//! child, a `count` of how many times the whole list may run within a `period` (OTP's
//! intensity and period, [`Intensity`]), and the counters that say where a child is in its
//! plan. Pure: [`PlanState::decide`] takes an exit and the time and returns what to do.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How a child's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// A process exited with this status.
    Exited(i32),
    /// A process was killed by this signal.
    Signaled(i32),
    /// An actor stopped itself.
    Stopped,
    /// An actor panicked.
    Panicked,
    /// A nested supervisor escalated with this reason.
    Escalated(String),
    /// The child could not be started.
    StartFailed(String),
    /// The child did not pass its readiness check within its start timeout.
    NotReady(Duration),
    /// A process was killed (SIGKILL) by the kernel's OOM killer: the `oom_kill` count of its
    /// cgroup's `memory.events` grew during its run. Holds the service's `memory_max` in
    /// bytes, when it has one.
    OomKilled(Option<u64>),
}

impl ExitReason {
    /// A clean exit: status 0, or an actor that stopped itself.
    pub fn is_clean(&self) -> bool {
        matches!(self, ExitReason::Exited(0) | ExitReason::Stopped)
    }

    /// The exit status, for processes that exited.
    pub fn status(&self) -> Option<i32> {
        match self {
            ExitReason::Exited(code) => Some(*code),
            _ => None,
        }
    }

    /// The signal, for processes killed by one.
    pub fn signal(&self) -> Option<i32> {
        match self {
            ExitReason::Signaled(signal) => Some(*signal),
            ExitReason::OomKilled(_) => Some(libc::SIGKILL),
            _ => None,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Exited(code) => write!(f, "exit status {code}"),
            ExitReason::Signaled(signal) => {
                let name = nix::sys::signal::Signal::try_from(*signal)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown");
                write!(f, "killed by signal {signal} ({name})")
            }
            ExitReason::Stopped => f.write_str("stopped"),
            ExitReason::Panicked => f.write_str("panicked"),
            ExitReason::Escalated(reason) => write!(f, "escalated: {reason}"),
            ExitReason::StartFailed(reason) => write!(f, "failed to start: {reason}"),
            ExitReason::NotReady(timeout) => {
                write!(f, "not ready within {} ms", timeout.as_millis())
            }
            ExitReason::OomKilled(None) => f.write_str("killed by the kernel's OOM killer"),
            ExitReason::OomKilled(Some(bytes)) => write!(
                f,
                "killed by the kernel's OOM killer (memory_max {})",
                crate::limits::ByteSize(*bytes)
            ),
        }
    }
}

/// Exponential restart delay: `initial`, then × `factor` per consecutive crash, at most `max`;
/// back to `initial` once the child has run at least `reset_after`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// First delay, in milliseconds.
    pub initial_ms: u64,
    /// Growth per consecutive crash (at least 1).
    #[serde(default = "Backoff::default_factor")]
    pub factor: f64,
    /// Longest delay, in milliseconds.
    pub max_ms: u64,
    /// A run at least this long (milliseconds) resets the delay to `initial_ms`. Default:
    /// `max_ms` (a child that outlived the longest delay is not in a crash loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_after_ms: Option<u64>,
}

impl Backoff {
    fn default_factor() -> f64 {
        2.0
    }

    /// The delay after `streak` consecutive crashes before this one (0 = the first).
    pub fn delay(&self, streak: u32) -> Duration {
        let grown = self.initial_ms as f64 * self.factor.powi(streak.min(1024) as i32);
        let ms = if grown.is_finite() {
            grown.min(self.max_ms as f64)
        } else {
            self.max_ms as f64
        };
        Duration::from_millis(ms.max(0.0) as u64)
    }

    /// How long a run must last to reset the delay.
    pub fn reset_after(&self) -> Duration {
        Duration::from_millis(self.reset_after_ms.unwrap_or(self.max_ms))
    }

    /// Checks the numbers; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(format!(
                "factor: must be a number >= 1, got {}",
                self.factor
            ));
        }
        if self.max_ms < self.initial_ms {
            return Err(format!(
                "max_ms ({}) is smaller than initial_ms ({})",
                self.max_ms, self.initial_ms
            ));
        }
        Ok(())
    }
}

/// The function behind a [`PlanFn`]: `(exit reason, restart count) -> element`.
type Decider = dyn Fn(&ExitReason, u64) -> PlanElement + Send + Sync;

/// A plan element computed from the exit: `f(reason, restart_count)`. From Rust only.
#[derive(Clone)]
pub struct PlanFn {
    name: Arc<str>,
    f: Arc<Decider>,
}

impl PlanFn {
    /// A named function element; `name` is what `get_plan` and the logs show.
    pub fn new(
        name: impl Into<Arc<str>>,
        f: impl Fn(&ExitReason, u64) -> PlanElement + Send + Sync + 'static,
    ) -> Self {
        PlanFn {
            name: name.into(),
            f: Arc::new(f),
        }
    }

    /// The function's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Director's default: a clean exit deletes the child, any other exit restarts it.
    pub fn default_plan() -> Self {
        PlanFn::new("default", |reason, _| {
            if reason.is_clean() {
                PlanElement::Delete
            } else {
                PlanElement::Restart
            }
        })
    }
}

impl fmt::Debug for PlanFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fn:{}", self.name)
    }
}

impl PartialEq for PlanFn {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.f, &other.f)
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanElement {
    /// Start the child again at once.
    Restart,
    /// Start the child again after this delay.
    RestartAfter(Duration),
    /// Start the child again after an exponential delay.
    RestartBackoff(Backoff),
    /// Forget the child.
    Delete,
    /// Leave the child down until `restart_child`.
    Wait,
    /// Escalate: the supervisor itself stops, with this reason if given.
    Stop(Option<String>),
    /// Ask a function (Rust API only).
    Decide(PlanFn),
}

impl fmt::Display for PlanElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanElement::Restart => f.write_str("restart"),
            PlanElement::RestartAfter(d) => write!(f, "restart_after_ms={}", d.as_millis()),
            PlanElement::RestartBackoff(b) => write!(
                f,
                "restart_backoff(initial_ms={}, factor={}, max_ms={})",
                b.initial_ms, b.factor, b.max_ms
            ),
            PlanElement::Delete => f.write_str("delete"),
            PlanElement::Wait => f.write_str("wait"),
            PlanElement::Stop(None) => f.write_str("stop"),
            PlanElement::Stop(Some(reason)) => write!(f, "stop({reason})"),
            PlanElement::Decide(func) => write!(f, "fn:{}", func.name()),
        }
    }
}

/// The TOML/JSON forms, shown in errors.
const ELEMENT_FORMS: &str = "\"restart\", { restart_after_ms = N }, \
{ restart_backoff = { initial_ms, factor, max_ms } }, \"delete\", \"wait\", \"stop\" or { stop = \"reason\" }";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ElementTable {
    restart_after_ms: Option<u64>,
    restart_backoff: Option<Backoff>,
    stop: Option<String>,
}

impl<'de> Deserialize<'de> for PlanElement {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        match &value {
            serde_json::Value::String(word) => match word.as_str() {
                "restart" => Ok(PlanElement::Restart),
                "delete" => Ok(PlanElement::Delete),
                "wait" => Ok(PlanElement::Wait),
                "stop" => Ok(PlanElement::Stop(None)),
                other => Err(D::Error::custom(format!(
                    "unknown plan element \"{other}\"; expected {ELEMENT_FORMS}"
                ))),
            },
            serde_json::Value::Object(map) if map.len() == 1 => {
                let table: ElementTable = serde_json::from_value(value.clone()).map_err(|e| {
                    D::Error::custom(format!("{e}; a plan element is one of {ELEMENT_FORMS}"))
                })?;
                if let Some(ms) = table.restart_after_ms {
                    Ok(PlanElement::RestartAfter(Duration::from_millis(ms)))
                } else if let Some(backoff) = table.restart_backoff {
                    backoff
                        .check()
                        .map_err(|e| D::Error::custom(format!("restart_backoff.{e}")))?;
                    Ok(PlanElement::RestartBackoff(backoff))
                } else {
                    Ok(PlanElement::Stop(table.stop))
                }
            }
            other => Err(D::Error::custom(format!(
                "invalid plan element {other}; expected {ELEMENT_FORMS}"
            ))),
        }
    }
}

impl Serialize for PlanElement {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            PlanElement::Restart => serializer.serialize_str("restart"),
            PlanElement::Delete => serializer.serialize_str("delete"),
            PlanElement::Wait => serializer.serialize_str("wait"),
            PlanElement::Stop(None) => serializer.serialize_str("stop"),
            PlanElement::Stop(Some(reason)) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("stop", reason)?;
                map.end()
            }
            PlanElement::RestartAfter(d) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("restart_after_ms", &(d.as_millis() as u64))?;
                map.end()
            }
            PlanElement::RestartBackoff(b) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("restart_backoff", b)?;
                map.end()
            }
            PlanElement::Decide(func) => {
                serializer.collect_str(&format_args!("fn:{}", func.name()))
            }
        }
    }
}

/// How many times a plan may run: a number or `"infinity"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// At most this many runs.
    Finite(u64),
    /// No limit.
    Infinity,
}

impl Count {
    /// `self + other`, as director adds the counts of an appended child spec.
    pub fn plus(self, other: Count) -> Count {
        match (self, other) {
            (Count::Finite(a), Count::Finite(b)) => Count::Finite(a.saturating_add(b)),
            _ => Count::Infinity,
        }
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::Finite(n) => write!(f, "{n}"),
            Count::Infinity => f.write_str("infinity"),
        }
    }
}

impl Serialize for Count {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Count::Finite(n) => serializer.serialize_u64(*n),
            Count::Infinity => serializer.serialize_str("infinity"),
        }
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(s) if s == "infinity" => Ok(Count::Infinity),
            serde_json::Value::Number(n) if n.as_u64().is_some() => {
                Ok(Count::Finite(n.as_u64().unwrap_or_default()))
            }
            other => Err(D::Error::custom(format!(
                "invalid count {other}; expected a number >= 0 or \"infinity\""
            ))),
        }
    }
}

/// A plan: its elements (possibly none) as a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Plan(pub Vec<PlanElement>);

impl Plan {
    /// Director's default plan: one function that deletes on a clean exit and restarts
    /// otherwise.
    pub fn default_plan() -> Plan {
        Plan(vec![PlanElement::Decide(PlanFn::default_plan())])
    }
}

impl Plan {
    /// Whether two plans decide alike: the same elements, a function element counting as the
    /// same as another of the same name (functions cannot be compared, and a plan read from
    /// configuration only holds the default plan's).
    pub fn same_as(&self, other: &Plan) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().zip(&other.0).all(|pair| match pair {
                (PlanElement::Decide(a), PlanElement::Decide(b)) => a.name() == b.name(),
                (a, b) => a == b,
            })
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, element) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{element}")?;
        }
        f.write_str("]")
    }
}

/// What the supervisor does after an exit.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Start the child again after `delay` (zero: at once).
    Restart {
        /// How long to wait first.
        delay: Duration,
    },
    /// Forget the child.
    Delete,
    /// Leave it down until `restart_child`.
    Wait,
    /// The plan is used up: it ran `count` times within `period`, or it is empty. The
    /// supervisor escalates, or (the node's own, for `on_exhausted = "fail"`) marks the child
    /// failed.
    Exhausted(Exhaustion),
    /// Stop the supervisor with this reason (a `stop` element).
    Escalate(String),
}

/// Why a plan is used up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exhaustion {
    /// The plan has no element: the first unplanned exit uses it up.
    Empty,
    /// `count` cycles of the plan completed within `period`.
    Count {
        /// The plan's count.
        count: u64,
        /// The window they completed in.
        period: Duration,
    },
}

impl Exhaustion {
    /// The reason a supervisor escalates with: `empty restart plan; last exit: ...` or
    /// `reached max restart plan (count 5 within 60s); last exit: ...`.
    pub fn escalation(&self, last: &ExitReason) -> String {
        match self {
            Exhaustion::Empty => format!("empty restart plan; last exit: {last}"),
            Exhaustion::Count { count, period } => format!(
                "reached max restart plan (count {count} within {}); last exit: {last}",
                duration_text(*period)
            ),
        }
    }

    /// The `failure` of a child marked failed: `exhausted its restart plan: 5 cycles within
    /// 60s; last exit: ...`.
    pub fn failure(&self, last: &ExitReason) -> String {
        let why = match self {
            Exhaustion::Empty => "the plan is empty".to_string(),
            Exhaustion::Count { count: 0, .. } => "its count is 0".to_string(),
            Exhaustion::Count { count, period } => {
                format!("{count} cycles within {}", duration_text(*period))
            }
        };
        format!("exhausted its restart plan: {why}; last exit: {last}")
    }
}

/// A duration as a config file writes it: `60s`, `100ms`, `1500us`, `7ns` (the largest unit
/// that shows it exactly; parsed back by `troupe_core::settings::Duration`).
pub fn duration_text(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else if d.subsec_nanos().is_multiple_of(1_000) {
        format!("{}us", d.as_micros())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

/// How often a plan may run before it is used up: `count` cycles (passes through the whole
/// plan) within `period`, as OTP's intensity and period. A cycle that completed more than
/// `period` ago no longer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    /// Cycles allowed within `period` (`Infinity`: never used up).
    pub count: Count,
    /// The sliding window.
    pub period: Duration,
}

/// A decision and where in the plan it came from, for the logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What to do.
    pub outcome: Outcome,
    /// The element applied, as written (`None` when the plan is empty or exhausted).
    pub element: Option<String>,
    /// 1-based index of the element applied (0 when none).
    pub index: usize,
}

/// Where a child is in its plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanState {
    /// Elements of the current cycle already used.
    pub index: usize,
    /// Completed runs of the whole plan (director's cycle counter; never decreases).
    pub cycles: u64,
    /// Restarts decided so far.
    pub restarts: u64,
    /// Consecutive backoff restarts (reset by a long enough run).
    pub streak: u32,
    /// When the most recent cycles completed (the exit that used a cycle's last element),
    /// oldest first: at most `count` of them, none older than `period` once pruned.
    completions: VecDeque<Instant>,
}

impl PlanState {
    /// Applies `plan` to an exit for `reason` after a run of `ran_for`, at `now`.
    ///
    /// Director's semantics, with a window: the elements are used one per exit; a cycle
    /// completes when its last element is used; the exit after that starts the next cycle,
    /// unless `limit.count` cycles completed within `limit.period` before `now`: the plan is
    /// then [`Outcome::Exhausted`] (as it is at the first exit when it is empty).
    pub fn decide(
        &mut self,
        plan: &Plan,
        limit: Intensity,
        reason: &ExitReason,
        ran_for: Duration,
        now: Instant,
    ) -> Decision {
        if plan.0.is_empty() {
            return Decision {
                outcome: Outcome::Exhausted(Exhaustion::Empty),
                element: None,
                index: 0,
            };
        }
        if self.index >= plan.0.len() {
            self.index = 0;
            self.cycles += 1;
        }
        if let Some(exhaustion) = self.exhausted(limit, now) {
            return Decision {
                outcome: Outcome::Exhausted(exhaustion),
                element: None,
                index: 0,
            };
        }
        let written = &plan.0[self.index];
        self.index += 1;
        if self.index == plan.0.len() {
            self.complete_cycle(limit, now);
        }
        let element = match written {
            PlanElement::Decide(func) => (func.f)(reason, self.restarts),
            other => other.clone(),
        };
        let outcome = match &element {
            PlanElement::Restart => Outcome::Restart {
                delay: Duration::ZERO,
            },
            PlanElement::RestartAfter(delay) => Outcome::Restart { delay: *delay },
            PlanElement::RestartBackoff(backoff) => {
                if ran_for >= backoff.reset_after() {
                    self.streak = 0;
                }
                let delay = backoff.delay(self.streak);
                self.streak = self.streak.saturating_add(1);
                Outcome::Restart { delay }
            }
            PlanElement::Delete => Outcome::Delete,
            PlanElement::Wait => Outcome::Wait,
            PlanElement::Stop(Some(reason)) => Outcome::Escalate(reason.clone()),
            PlanElement::Stop(None) => {
                Outcome::Escalate(format!("restart plan says stop; last exit: {reason}"))
            }
            PlanElement::Decide(func) => Outcome::Escalate(format!(
                "plan function {} returned another function",
                func.name()
            )),
        };
        if matches!(outcome, Outcome::Restart { .. }) {
            self.restarts += 1;
        }
        let shown = match written {
            PlanElement::Decide(func) => format!("fn:{} -> {element}", func.name()),
            other => other.to_string(),
        };
        Decision {
            outcome,
            element: Some(shown),
            index: self.index,
        }
    }

    /// Cycles completed within `period` before `now` (`None` for an infinite count, whose
    /// cycles are not kept).
    pub fn cycles_in_period(&self, limit: Intensity, now: Instant) -> Option<u64> {
        match limit.count {
            Count::Infinity => None,
            Count::Finite(_) => Some(
                self.completions
                    .iter()
                    .filter(|t| now.saturating_duration_since(**t) <= limit.period)
                    .count() as u64,
            ),
        }
    }

    fn exhausted(&mut self, limit: Intensity, now: Instant) -> Option<Exhaustion> {
        let Count::Finite(count) = limit.count else {
            return None;
        };
        self.forget_older_than(limit.period, now);
        (self.completions.len() as u64 >= count).then_some(Exhaustion::Count {
            count,
            period: limit.period,
        })
    }

    fn complete_cycle(&mut self, limit: Intensity, now: Instant) {
        let Count::Finite(count) = limit.count else {
            return;
        };
        self.forget_older_than(limit.period, now);
        self.completions.push_back(now);
        while self.completions.len() as u64 > count {
            self.completions.pop_front();
        }
    }

    fn forget_older_than(&mut self, period: Duration, now: Instant) {
        while self
            .completions
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > period)
        {
            self.completions.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRASH: ExitReason = ExitReason::Exited(1);
    const LONG: Duration = Duration::from_secs(3600);

    fn plan(json: &str) -> Plan {
        serde_json::from_str(json).unwrap()
    }

    const MINUTE: Duration = Duration::from_secs(60);

    /// The fake clock's origin.
    fn base() -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    fn at(ms: u64) -> Instant {
        base() + Duration::from_millis(ms)
    }

    fn within(count: Count) -> Intensity {
        Intensity {
            count,
            period: MINUTE,
        }
    }

    fn run(state: &mut PlanState, plan: &Plan, count: Count) -> Outcome {
        state
            .decide(plan, within(count), &CRASH, Duration::ZERO, base())
            .outcome
    }

    fn restart(ms: u64) -> Outcome {
        Outcome::Restart {
            delay: Duration::from_millis(ms),
        }
    }

    #[test]
    fn every_element_has_its_outcome() {
        let p = plan(
            r#"["restart", {"restart_after_ms": 250}, "wait", "delete", {"stop": "enough"}, "stop"]"#,
        );
        let mut s = PlanState::default();
        let n = Count::Finite(1);
        assert_eq!(run(&mut s, &p, n), restart(0));
        assert_eq!(run(&mut s, &p, n), restart(250));
        assert_eq!(run(&mut s, &p, n), Outcome::Wait);
        assert_eq!(run(&mut s, &p, n), Outcome::Delete);
        assert_eq!(run(&mut s, &p, n), Outcome::Escalate("enough".into()));
        match run(&mut s, &p, n) {
            Outcome::Escalate(reason) => assert!(reason.contains("exit status 1"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.restarts, 2);
        assert_eq!(s.index, 6);
    }

    #[test]
    fn the_plan_wraps_until_count_is_reached() {
        let p = plan(r#"["restart", {"restart_after_ms": 5}]"#);
        let mut s = PlanState::default();
        let n = Count::Finite(2);
        for _ in 0..2 {
            assert_eq!(run(&mut s, &p, n), restart(0));
            assert_eq!(run(&mut s, &p, n), restart(5));
        }
        assert_eq!(s.cycles, 1);
        let exhausted = run(&mut s, &p, n);
        let Outcome::Exhausted(why) = &exhausted else {
            panic!("{exhausted:?}")
        };
        assert_eq!(
            *why,
            Exhaustion::Count {
                count: 2,
                period: MINUTE
            }
        );
        let reason = why.escalation(&CRASH);
        assert_eq!(
            reason,
            "reached max restart plan (count 2 within 60s); last exit: exit status 1"
        );
        assert_eq!(
            why.failure(&CRASH),
            "exhausted its restart plan: 2 cycles within 60s; last exit: exit status 1"
        );
        assert_eq!(s.cycles, 2);
    }

    #[test]
    fn count_zero_runs_the_plan_zero_times_and_infinity_never_escalates() {
        let p = plan(r#"["restart"]"#);
        let mut s = PlanState::default();
        let zero = run(&mut s, &p, Count::Finite(0));
        assert!(matches!(zero, Outcome::Exhausted(_)), "{zero:?}");
        let mut s = PlanState::default();
        for _ in 0..10_000 {
            assert_eq!(run(&mut s, &p, Count::Infinity), restart(0));
        }
        assert_eq!(s.restarts, 10_000);
        assert_eq!(s.cycles_in_period(within(Count::Infinity), base()), None);
    }

    #[test]
    fn an_empty_plan_is_exhausted_on_the_first_crash() {
        let mut s = PlanState::default();
        let outcome = run(&mut s, &Plan(vec![]), Count::Infinity);
        assert_eq!(outcome, Outcome::Exhausted(Exhaustion::Empty));
        assert_eq!(
            Exhaustion::Empty.escalation(&CRASH),
            "empty restart plan; last exit: exit status 1"
        );
        assert!(Exhaustion::Empty
            .failure(&CRASH)
            .contains("the plan is empty"));
    }

    /// Crashes at `times` (ms) of a one-element plan with count 5 within 60 s; the outcomes.
    fn crashes_at(times: &[u64]) -> (PlanState, Vec<Outcome>) {
        let p = plan(r#"["restart"]"#);
        let mut s = PlanState::default();
        let outcomes = times
            .iter()
            .map(|&t| {
                s.decide(&p, within(Count::Finite(5)), &CRASH, Duration::ZERO, at(t))
                    .outcome
            })
            .collect();
        (s, outcomes)
    }

    #[test]
    fn count_cycles_within_the_period_use_the_plan_up() {
        // Each crash uses the one element: 5 crashes complete 5 cycles. Within 60 s, the
        // next crash finds the plan used up.
        let (s, outcomes) = crashes_at(&[0, 1_000, 2_000, 3_000, 4_000, 5_000]);
        assert_eq!(
            outcomes[..5],
            [restart(0), restart(0), restart(0), restart(0), restart(0)]
        );
        assert!(matches!(
            outcomes[5],
            Outcome::Exhausted(Exhaustion::Count { count: 5, .. })
        ));
        assert_eq!(
            s.cycles_in_period(within(Count::Finite(5)), at(5_000)),
            Some(5)
        );
        // At exactly `period` after the first, it still counts.
        let (_, outcomes) = crashes_at(&[0, 1, 2, 3, 4, 60_000]);
        assert!(matches!(outcomes[5], Outcome::Exhausted(_)));
    }

    #[test]
    fn cycles_older_than_the_period_drop_out() {
        // 6 crashes spread over 70 s: never 5 completed cycles within 60 s of a crash.
        let times = [0, 14_000, 28_000, 42_000, 56_000, 70_000];
        let (s, outcomes) = crashes_at(&times);
        assert!(outcomes.iter().all(|o| *o == restart(0)), "{outcomes:?}");
        assert_eq!(s.cycles, 5);
        assert_eq!(
            s.cycles_in_period(within(Count::Finite(5)), at(70_000)),
            Some(5)
        );
        // A crash long after the previous ones starts afresh, and a crash loop that slows
        // down below 5 per minute runs for ever.
        let mut times: Vec<u64> = (0..5).collect();
        times.push(3_600_000);
        times.extend((1..200).map(|i| 3_600_000 + i * 13_000));
        let (s, outcomes) = crashes_at(&times);
        assert!(outcomes.iter().all(|o| *o == restart(0)), "{outcomes:?}");
        // Memory stays bounded by the count.
        assert!(s.completions.len() <= 5);
    }

    #[test]
    fn a_longer_plan_completes_a_cycle_with_its_last_element() {
        let p = plan(r#"["restart", "restart"]"#);
        let limit = Intensity {
            count: Count::Finite(2),
            period: Duration::from_secs(10),
        };
        let mut s = PlanState::default();
        let mut crash = |t: u64| s.decide(&p, limit, &CRASH, Duration::ZERO, at(t)).outcome;
        // Cycles complete at 1 s and 3 s; at 12 s the first is out of the window.
        for t in [0, 1_000, 2_000, 3_000, 12_000] {
            assert_eq!(crash(t), restart(0), "{t}");
        }
        // Cycles at 3 s and 12.5 s: 2 within 10 s.
        assert_eq!(crash(12_500), restart(0));
        assert!(matches!(crash(12_600), Outcome::Exhausted(_)));
    }

    #[test]
    fn durations_show_as_written() {
        assert_eq!(duration_text(Duration::from_secs(60)), "60s");
        assert_eq!(duration_text(Duration::from_millis(100)), "100ms");
        assert_eq!(duration_text(Duration::ZERO), "0s");
        assert_eq!(duration_text(Duration::from_micros(1500)), "1500us");
        assert_eq!(duration_text(Duration::from_nanos(7)), "7ns");
        for d in ["60s", "100ms", "0s", "1500us", "7ns"] {
            let parsed: troupe_core::settings::Duration = d.parse().unwrap();
            assert_eq!(duration_text(parsed.get()), d);
        }
    }

    #[test]
    fn backoff_grows_per_consecutive_crash_and_resets_after_a_long_run() {
        let p = plan(
            r#"[{"restart_backoff": {"initial_ms": 100, "factor": 2, "max_ms": 1000, "reset_after_ms": 5000}}]"#,
        );
        let mut s = PlanState::default();
        let short = Duration::from_millis(10);
        let delays: Vec<_> = (0..6)
            .map(|_| {
                s.decide(&p, within(Count::Infinity), &CRASH, short, base())
                    .outcome
            })
            .collect();
        assert_eq!(
            delays,
            [
                restart(100),
                restart(200),
                restart(400),
                restart(800),
                restart(1000),
                restart(1000)
            ]
        );
        let after_long_run = s.decide(
            &p,
            within(Count::Infinity),
            &CRASH,
            Duration::from_secs(5),
            base(),
        );
        assert_eq!(after_long_run.outcome, restart(100));
        assert_eq!(
            s.decide(&p, within(Count::Infinity), &CRASH, short, base())
                .outcome,
            restart(200)
        );
    }

    #[test]
    fn backoff_reset_defaults_to_max() {
        let b: Backoff = serde_json::from_str(r#"{"initial_ms": 10, "max_ms": 700}"#).unwrap();
        assert_eq!(b.factor, 2.0);
        assert_eq!(b.reset_after(), Duration::from_millis(700));
    }

    #[test]
    fn default_plan_deletes_on_clean_exit_and_restarts_otherwise() {
        let p = Plan::default_plan();
        let mut s = PlanState::default();
        let clean = s.decide(
            &p,
            within(Count::Finite(5)),
            &ExitReason::Exited(0),
            LONG,
            base(),
        );
        assert_eq!(clean.outcome, Outcome::Delete);
        assert_eq!(clean.element.as_deref(), Some("fn:default -> delete"));
        for reason in [
            ExitReason::Exited(3),
            ExitReason::Signaled(9),
            ExitReason::Panicked,
        ] {
            let mut s = PlanState::default();
            assert_eq!(
                s.decide(&p, within(Count::Finite(1)), &reason, LONG, base())
                    .outcome,
                restart(0),
                "{reason}"
            );
        }
        let mut s = PlanState::default();
        assert_eq!(
            s.decide(
                &p,
                within(Count::Finite(1)),
                &ExitReason::Stopped,
                LONG,
                base()
            )
            .outcome,
            Outcome::Delete
        );
    }

    #[test]
    fn a_function_element_sees_the_reason_and_the_restart_count() {
        let f = PlanFn::new("three-then-wait", |reason, restarts| {
            if matches!(reason, ExitReason::Signaled(_)) {
                PlanElement::Stop(Some("signalled".into()))
            } else if restarts < 3 {
                PlanElement::RestartAfter(Duration::from_millis(restarts * 10))
            } else {
                PlanElement::Wait
            }
        });
        let p = Plan(vec![PlanElement::Decide(f)]);
        let mut s = PlanState::default();
        let outcomes: Vec<_> = (0..4).map(|_| run(&mut s, &p, Count::Infinity)).collect();
        assert_eq!(
            outcomes,
            [restart(0), restart(10), restart(20), Outcome::Wait]
        );
        let signalled = s.decide(
            &p,
            within(Count::Infinity),
            &ExitReason::Signaled(9),
            LONG,
            base(),
        );
        assert_eq!(signalled.outcome, Outcome::Escalate("signalled".into()));
    }

    #[test]
    fn plans_round_trip_and_bad_elements_name_the_forms() {
        let text = r#"["restart",{"restart_after_ms":5},{"restart_backoff":{"initial_ms":1,"factor":3.0,"max_ms":9}},"delete","wait","stop",{"stop":"why"}]"#;
        let p = plan(text);
        assert_eq!(serde_json::to_string(&p).unwrap(), text);
        for bad in [
            r#"["restrat"]"#,
            r#"[{"restart_after": 5}]"#,
            r#"[5]"#,
            r#"[{"restart_backoff": {"initial_ms": 10, "max_ms": 1}}]"#,
            r#"[{"restart_backoff": {"initial_ms": 1, "max_ms": 10, "factor": 0.5}}]"#,
        ] {
            let err = serde_json::from_str::<Plan>(bad).unwrap_err().to_string();
            assert!(
                err.contains("expected") || err.contains("max_ms") || err.contains("factor"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn counts_parse_and_add() {
        assert_eq!(
            serde_json::from_str::<Count>("3").unwrap(),
            Count::Finite(3)
        );
        assert_eq!(
            serde_json::from_str::<Count>("\"infinity\"").unwrap(),
            Count::Infinity
        );
        assert!(serde_json::from_str::<Count>("-1").is_err());
        assert!(serde_json::from_str::<Count>("\"forever\"").is_err());
        assert_eq!(Count::Finite(1).plus(Count::Finite(5)), Count::Finite(6));
        assert_eq!(Count::Finite(1).plus(Count::Infinity), Count::Infinity);
    }

    #[test]
    fn exit_reasons_say_what_happened() {
        assert_eq!(ExitReason::Exited(3).to_string(), "exit status 3");
        assert_eq!(
            ExitReason::Signaled(9).to_string(),
            "killed by signal 9 (SIGKILL)"
        );
        assert!(ExitReason::Exited(0).is_clean());
        assert!(!ExitReason::Signaled(15).is_clean());
        let oom = ExitReason::OomKilled(Some(512 << 20));
        assert_eq!(
            oom.to_string(),
            "killed by the kernel's OOM killer (memory_max 512MiB)"
        );
        assert_eq!(
            ExitReason::OomKilled(None).to_string(),
            "killed by the kernel's OOM killer"
        );
        assert_eq!(oom.signal(), Some(9));
        assert_eq!(oom.status(), None);
        assert!(!oom.is_clean());
    }
}
