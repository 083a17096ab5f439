//! Named fault points, so tests drive races deterministically instead of hoping for them.
//!
//! Code that has a race worth testing calls [`Faults::hit`] at the step in question
//! (`faults.hit("gc.before_drop").await?`). Nothing is armed in production, where a hit costs
//! one branch on an `Option`. A test arms a point on the [`Faults`] handle it gave the
//! component (each component gets its handle through its config, so tests running side by
//! side in one process never see each other's faults):
//!
//! - [`Action::Pause`]: the hit waits until the test calls [`Faults::release`]; the test can
//!   first wait until it got there ([`Faults::wait_hit`]). "Pause between the scan and the apply."
//! - [`Action::Fail`]: the hit returns the error. "Return EIO from the shard store."
//! - [`Action::FailNth`]: only the n-th hit from now fails. "Fail the third shard put."
//! - [`Action::Exit`]: the process ends at once, as a crash would (daemons under process
//!   tests only). "The leader dies after the commit, before the reply."
//!
//! Daemons started as processes read `DFS_FAULTS` (`name=pause,other=fail`; see
//! [`Faults::from_env`]), so process tests can arm points too. Where such a process serves
//! HTTP, [`Faults::http_handler`] lets the test arm, release and count points while it runs
//! (pause here, do something, let it go on); without `DFS_FAULTS` there is no such page.

use crate::{FsError, FsResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// What an armed fault point does when it is hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Wait at the point until released.
    Pause,
    /// Fail every hit with this error.
    Fail(FsError),
    /// Fail only the n-th hit from the time of arming (1 is the next one).
    FailNth(u32, FsError),
    /// End the process at once, with no clean-up (a crash at this point).
    Exit,
}

#[derive(Default)]
struct Point {
    action: Option<Action>,
    /// Hits since the point was armed.
    hits: u32,
    /// Hits currently waiting at a pause.
    waiting: u32,
    /// Releases handed out and not yet taken by a waiter.
    released: u32,
}

#[derive(Default)]
struct Inner {
    points: Mutex<HashMap<String, Point>>,
    /// Woken whenever a point is hit or released.
    changed: Notify,
}

/// A set of fault points shared by one component (or one test cluster). Cheap to clone.
#[derive(Clone, Default)]
pub struct Faults(Option<Arc<Inner>>);

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Faults(enabled)"
        } else {
            "Faults(off)"
        })
    }
}

impl Faults {
    /// A set that can be armed (tests). `Faults::default()` is the inert production set.
    pub fn enabled() -> Faults {
        Faults(Some(Arc::default()))
    }

    /// Whether points can be armed: callers that build a point's name at run time skip the
    /// work when not.
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Points armed from `DFS_FAULTS`: comma-separated `name=pause`, `name=fail` (EIO),
    /// `name=fail@N` (only the N-th hit) or `name=exit` (the process dies there); `enabled`
    /// alone arms nothing but makes a set that can be armed later (over HTTP). Unset or empty
    /// gives the inert set.
    pub fn from_env() -> FsResult<Faults> {
        match std::env::var("DFS_FAULTS") {
            Ok(spec) if !spec.trim().is_empty() => Faults::parse(&spec),
            _ => Ok(Faults::default()),
        }
    }

    fn parse(spec: &str) -> FsResult<Faults> {
        let faults = Faults::enabled();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "enabled" {
                continue;
            }
            let (name, action) = item
                .split_once('=')
                .ok_or_else(|| FsError::invalid(format!("fault {item:?}: expected NAME=ACTION")))?;
            let action = parse_action(name, action).ok_or_else(|| {
                FsError::invalid(format!(
                    "fault {item:?}: the action is pause, fail, fail@N or exit"
                ))
            })?;
            faults.arm(name, action);
        }
        Ok(faults)
    }

    /// Control of the points over HTTP, for process tests, when the set can be armed:
    /// `/faults/NAME/ACTION` arms NAME (ACTION as in `DFS_FAULTS`), `/faults/NAME/release`
    /// lets one paused hit go on, `/faults/NAME/disarm` disarms it, and `/faults/NAME/hits`
    /// answers how often it was hit since it was armed. Other paths are not its own (`None`).
    pub fn http_handler(&self) -> Option<crate::http::Handler> {
        self.is_enabled().then_some(())?;
        let faults = self.clone();
        Some(std::sync::Arc::new(move |path: &str| {
            let (name, verb) = path.strip_prefix("/faults/")?.rsplit_once('/')?;
            let done = match verb {
                "hits" => faults.hits(name).to_string(),
                "release" => {
                    faults.release(name);
                    "released".into()
                }
                "disarm" => {
                    faults.disarm(name);
                    "disarmed".into()
                }
                action => {
                    faults.arm(name, parse_action(name, action)?);
                    "armed".into()
                }
            };
            Some(crate::http::Page {
                content_type: "text/plain",
                body: done + "\n",
            })
        }))
    }

    /// Arms `name`, resetting its hit count.
    pub fn arm(&self, name: &str, action: Action) {
        if let Some(inner) = &self.0 {
            let mut points = inner.points.lock().expect("fault points");
            let point = points.entry(name.to_string()).or_default();
            point.action = Some(action);
            point.hits = 0;
        }
    }

    /// Disarms `name` and lets everything paused there go on.
    pub fn disarm(&self, name: &str) {
        if let Some(inner) = &self.0 {
            let mut points = inner.points.lock().expect("fault points");
            if let Some(point) = points.get_mut(name) {
                point.action = None;
                point.released += point.waiting;
            }
            inner.changed.notify_waiters();
        }
    }

    /// Lets one hit paused at `name` (or the next one to arrive) go on.
    pub fn release(&self, name: &str) {
        if let Some(inner) = &self.0 {
            inner
                .points
                .lock()
                .expect("fault points")
                .entry(name.to_string())
                .or_default()
                .released += 1;
            inner.changed.notify_waiters();
        }
    }

    /// How often `name` was hit since it was armed.
    pub fn hits(&self, name: &str) -> u32 {
        self.0.as_ref().map_or(0, |inner| {
            inner
                .points
                .lock()
                .expect("fault points")
                .get(name)
                .map_or(0, |p| p.hits)
        })
    }

    /// Waits until `name` has been hit at least `count` times since it was armed; fails after
    /// `timeout` (a test that waits for a point its code never reaches must not hang).
    pub async fn wait_hit(&self, name: &str, count: u32, timeout: Duration) -> FsResult<()> {
        let Some(inner) = &self.0 else {
            return Err(FsError::invalid("fault points are not enabled"));
        };
        let wait = async {
            loop {
                let changed = inner.changed.notified();
                if self.hits(name) >= count {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| FsError::TimedOut(format!("fault point {name} not hit {count} times")))
    }

    /// Passes the fault point `name`: returns at once unless a test armed it.
    pub async fn hit(&self, name: &str) -> FsResult<()> {
        let Some(inner) = &self.0 else {
            return Ok(());
        };
        {
            let mut points = inner.points.lock().expect("fault points");
            let Some(point) = points.get_mut(name).filter(|p| p.action.is_some()) else {
                return Ok(());
            };
            point.hits += 1;
            let action = point.action.clone().expect("armed");
            if action == Action::Pause {
                point.waiting += 1;
            }
            inner.changed.notify_waiters();
            match action {
                Action::Pause => {}
                Action::Fail(e) => return Err(e),
                Action::FailNth(n, e) if point.hits == n => return Err(e),
                Action::FailNth(..) => return Ok(()),
                Action::Exit => {
                    eprintln!("fault point {name}: exiting");
                    std::process::exit(86);
                }
            }
        }
        tracing::info!(point = name, "paused at fault point");
        loop {
            let changed = inner.changed.notified();
            {
                let mut points = inner.points.lock().expect("fault points");
                let point = points.get_mut(name).expect("point exists while paused");
                if point.released > 0 {
                    point.released -= 1;
                    point.waiting -= 1;
                    return Ok(());
                }
            }
            changed.await;
        }
    }
}

/// The action `pause`, `fail` (EIO), `fail@N` or `exit`, for point `name`.
fn parse_action(name: &str, action: &str) -> Option<Action> {
    let eio = || FsError::io(format!("injected fault at {name}"));
    match action {
        "pause" => Some(Action::Pause),
        "fail" => Some(Action::Fail(eio())),
        "exit" => Some(Action::Exit),
        other => match other.strip_prefix("fail@")?.parse::<u32>() {
            Ok(n) if n > 0 => Some(Action::FailNth(n, eio())),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_handler_arms_counts_and_releases() {
        assert!(Faults::default().http_handler().is_none());
        let faults = Faults::parse("enabled").unwrap();
        let page = faults.http_handler().expect("an armable set has the page");
        let get = |path: &str| page(path).map(|p| p.body);
        assert_eq!(get("/faults/p/pause").as_deref(), Some("armed\n"));
        assert_eq!(get("/faults/p/sometimes"), None, "unknown action");
        assert_eq!(get("/metrics"), None, "not its path");
        let waiting = tokio::spawn({
            let faults = faults.clone();
            async move { faults.hit("p").await }
        });
        faults
            .wait_hit("p", 1, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(get("/faults/p/hits").as_deref(), Some("1\n"));
        assert!(!waiting.is_finished());
        assert_eq!(get("/faults/p/release").as_deref(), Some("released\n"));
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(get("/faults/q/fail@2").as_deref(), Some("armed\n"));
        assert_eq!(faults.hit("q").await, Ok(()));
        assert!(faults.hit("q").await.is_err());
        assert_eq!(get("/faults/q/disarm").as_deref(), Some("disarmed\n"));
        assert_eq!(faults.hit("q").await, Ok(()));
    }

    #[tokio::test]
    async fn inert_set_passes_everything() {
        let faults = Faults::default();
        faults.arm("x", Action::Fail(FsError::NotFound));
        assert_eq!(faults.hit("x").await, Ok(()));
        assert_eq!(faults.hits("x"), 0);
    }

    #[tokio::test]
    async fn fail_and_fail_nth() {
        let faults = Faults::enabled();
        assert_eq!(faults.hit("a").await, Ok(()));
        faults.arm("a", Action::Fail(FsError::NotFound));
        assert_eq!(faults.hit("a").await, Err(FsError::NotFound));
        faults.arm("b", Action::FailNth(3, FsError::Exists));
        assert_eq!(faults.hit("b").await, Ok(()));
        assert_eq!(faults.hit("b").await, Ok(()));
        assert_eq!(faults.hit("b").await, Err(FsError::Exists));
        assert_eq!(faults.hit("b").await, Ok(()));
        faults.disarm("a");
        assert_eq!(faults.hit("a").await, Ok(()));
    }

    #[tokio::test]
    async fn pause_waits_for_release() {
        let faults = Faults::enabled();
        faults.arm("p", Action::Pause);
        let f = faults.clone();
        let task = tokio::spawn(async move { f.hit("p").await });
        faults
            .wait_hit("p", 1, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!task.is_finished());
        faults.release("p");
        assert_eq!(task.await.unwrap(), Ok(()));
        let other = Faults::enabled();
        let never = other.wait_hit("q", 1, Duration::from_millis(50)).await;
        assert!(matches!(never, Err(FsError::TimedOut(_))));
    }

    #[test]
    fn parses_the_environment_syntax() {
        let faults = Faults::parse("a=pause, b=fail,c=fail@2,d=exit").unwrap();
        let points = faults.0.as_ref().unwrap().points.lock().unwrap();
        assert_eq!(points["a"].action, Some(Action::Pause));
        assert_eq!(points["d"].action, Some(Action::Exit));
        assert!(matches!(points["c"].action, Some(Action::FailNth(2, _))));
        drop(points);
        assert!(Faults::parse("a=explode").is_err());
        assert!(Faults::parse("a").is_err());
        assert!(Faults::parse("a=fail@0").is_err());
    }
}
