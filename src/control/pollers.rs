//! The map pollers, following the config: one poller per map with a `source:`, started,
//! stopped and restarted as reloads change the maps ([`plan`] decides, [`run_pollers`] does
//! it). A poller whose map config is unchanged keeps running (and its last answer's hash); a
//! changed one is stopped and awaited before its successor starts, so an old source never
//! applies after the new one began, and N reloads never leave more than one poller per map.

use crate::config::{Config, MapConfig};
use crate::maps::poller::{run_poller, FetchFuture, Fetcher, MapFormat, PollerSettings};
use crate::maps::poller::{PollerStats, Updater};
use crate::maps::{MapContent, MapSource, MapTable};
use crate::state::AppState;
use pingora_core::connectors::http::v1::Connector;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use super::maps::replace_content;
use super::writer::Writer;

/// How often the running pollers are compared with the current config (a reload is
/// followed within this time).
pub const RECONCILE_EVERY: Duration = Duration::from_millis(200);

/// What to do so that the running pollers match the config: stop these maps' pollers, then
/// start these (a changed map is in both). Sorted by map name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PollerPlan {
    pub stop: Vec<String>,
    pub start: Vec<String>,
}

/// Compares the config of each running poller's map with the maps of the new config. Any
/// change of the map's config restarts its poller, not only of `source`: the reload then
/// rebuilt the map from its file (or empty), and a fresh poller applies its source at once.
pub fn plan(
    running: &HashMap<String, MapConfig>,
    maps: &BTreeMap<String, MapConfig>,
) -> PollerPlan {
    let mut p = PollerPlan::default();
    for (name, was) in running {
        if maps.get(name) != Some(was) {
            p.stop.push(name.clone());
        }
    }
    for (name, mc) in maps {
        if mc.source.is_some() && running.get(name) != Some(mc) {
            p.start.push(name.clone());
        }
    }
    p.stop.sort();
    p
}

/// One running poller: the map config it was started with and how to stop it.
struct Running {
    config: MapConfig,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the poller (an in-flight fetch is abandoned) and waits until it has.
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Runs the pollers of the current config until shutdown, following reloads (checked every
/// [`RECONCILE_EVERY`]).
pub async fn run_pollers(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut seen: Option<Arc<Config>> = None;
    // why: built off the runtime's thread when a poller first needs it (its TLS context
    // loads the system CA store); a config without sources never pays.
    let mut connector: Option<Arc<Connector>> = None;
    loop {
        let snap = state.snapshot();
        if !seen.as_ref().is_some_and(|c| Arc::ptr_eq(c, &snap.config)) {
            let configs = running
                .iter()
                .map(|(n, r)| (n.clone(), r.config.clone()))
                .collect();
            let todo = plan(&configs, &snap.config.maps);
            for name in &todo.stop {
                if let Some(r) = running.remove(name) {
                    let url = r.config.source.as_ref().map_or("", |s| s.url.as_str());
                    log::info!("map {name}: its config changed; the poller of {url} stops");
                    r.stop().await;
                }
            }
            if !todo.start.is_empty() && connector.is_none() {
                let made = tokio::task::spawn_blocking(|| Connector::new(None)).await;
                connector = Some(Arc::new(made.unwrap_or_else(|_| Connector::new(None))));
            }
            for name in &todo.start {
                let (Some(mc), Some(c)) = (snap.config.maps.get(name), &connector) else {
                    continue;
                };
                running.insert(name.clone(), start(&state, mc, c.clone()));
            }
            seen = Some(snap.config.clone());
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = shutdown.changed() => break,
        }
    }
    for (_, r) in running.drain() {
        r.stop().await;
    }
}

/// Starts the poller of `mc` (which has a source).
fn start(state: &Arc<AppState>, mc: &MapConfig, connector: Arc<Connector>) -> Running {
    let (stop, stopped) = watch::channel(false);
    let src = mc.source.clone().expect("planned maps have a source");
    let settings = PollerSettings {
        url: src.url.clone(),
        every: src.every,
        timeout: src.timeout,
        format: match src.format {
            crate::config::MapFormat::Map => MapFormat::Map,
            crate::config::MapFormat::Json => MapFormat::Json,
        },
    };
    let label = format!("maps.{}.source", mc.name);
    let fetcher = Fetcher::new(connector, &label, src.tls.as_ref());
    let fetch = move |u: String, t: Duration| -> FetchFuture {
        let f = fetcher.clone();
        Box::pin(async move { f.get(&u, t).await })
    };
    let on_update = PolledMap {
        state: state.clone(),
        map: mc.name.clone(),
        url: src.url.clone(),
    };
    log::info!("map {}: polling {} every {:?}", mc.name, src.url, src.every);
    let task = tokio::spawn(run_poller(
        settings,
        fetch,
        on_update,
        stopped,
        Arc::new(PollerStats::default()),
    ));
    Running {
        config: mc.clone(),
        stop,
        task,
    }
}

/// Where one poller's answers go: the live map `map`.
struct PolledMap {
    state: Arc<AppState>,
    map: String,
    url: String,
}

impl Updater for PolledMap {
    fn apply(&self, content: MapContent) -> Result<bool, String> {
        let before = self.current().map(|m| m.version);
        let v = replace_content(
            &self.state,
            &self.map,
            content,
            MapSource::Poller(self.url.clone()),
        )?;
        Ok(before != Some(v))
    }

    fn current(&self) -> Option<Arc<MapTable>> {
        self.state.snapshot().maps.get(&self.map).cloned()
    }

    fn fetch_failed(&self, _reason: &str) {
        let source = MapSource::Poller(self.url.clone());
        Writer::count_map(&self.state.metrics, &self.map, &source, "error");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::MapSourceConfig;

    fn map(name: &str, url: Option<&str>) -> MapConfig {
        MapConfig {
            name: name.into(),
            file: None,
            persist: false,
            source: url.map(|u| MapSourceConfig {
                url: u.into(),
                every: Duration::from_secs(60),
                timeout: Duration::from_secs(10),
                format: crate::config::MapFormat::Map,
                tls: None,
            }),
            policy: crate::maps::MapPolicy::default(),
        }
    }

    fn maps(list: &[MapConfig]) -> BTreeMap<String, MapConfig> {
        list.iter().map(|m| (m.name.clone(), m.clone())).collect()
    }

    #[test]
    fn the_first_plan_starts_every_map_with_a_source() {
        let p = plan(
            &HashMap::new(),
            &maps(&[map("a", Some("http://a/")), map("f", None)]),
        );
        assert_eq!(
            p,
            PollerPlan {
                stop: vec![],
                start: vec!["a".into()]
            }
        );
    }

    #[test]
    fn an_unchanged_map_keeps_its_poller_and_a_changed_or_removed_one_is_replaced() {
        let a = map("a", Some("http://a/"));
        let b = map("b", Some("http://b/"));
        let c = map("c", Some("http://c/"));
        let running: HashMap<String, MapConfig> = [&a, &b, &c]
            .iter()
            .map(|m| (m.name.clone(), (*m).clone()))
            .collect();
        let mut b2 = map("b", Some("http://b2/"));
        let mut c2 = c.clone();
        c2.source = None;
        let d = map("d", Some("http://d/"));
        let p = plan(&running, &maps(&[a.clone(), b2.clone(), c2, d]));
        assert_eq!(p.stop, ["b", "c"], "b's url changed, c lost its source");
        assert_eq!(p.start, ["b", "d"], "b with its new url, d is new");
        // A change of the source's settings other than the url restarts too.
        b2.source.as_mut().unwrap().every = Duration::from_secs(5);
        let running: HashMap<String, MapConfig> = [("b".to_string(), b.clone())].into();
        let p = plan(&running, &maps(&[b2]));
        assert_eq!((p.stop.len(), p.start.len()), (1, 1));
        // The same config again: nothing to do, so N reloads keep one poller per map.
        let p = plan(&running, &maps(&[b]));
        assert_eq!(p, PollerPlan::default());
        let p = plan(&running, &BTreeMap::new());
        assert_eq!(p.stop, ["b"], "a removed map's poller stops");
    }
}
