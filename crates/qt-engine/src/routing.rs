//! Event routing (requirement 4.3): event name -> agent target and focus.

use std::sync::Arc;

use globset::{Glob, GlobMatcher};
use qt_core::config::AgentConfig;

/// Where one event goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteMatch {
    pub target: Arc<str>,
    pub focus: Option<Arc<str>>,
}

#[derive(Debug)]
struct CompiledRoute {
    matcher: GlobMatcher,
    target: Arc<str>,
    focus: Option<Arc<str>>,
}

/// Routes compiled once from `agent`; the first matching route wins, then the default target.
#[derive(Debug)]
pub struct Router {
    routes: Vec<CompiledRoute>,
    default: Option<RouteMatch>,
}

impl Router {
    /// Compiles the routes. Globs were checked by config validation; one that still fails
    /// to compile is reported here.
    /// `default_target` receives events no route matches.
    pub fn new(config: &AgentConfig, default_target: Option<&str>) -> Result<Self, globset::Error> {
        let focus: Option<Arc<str>> = config.focus.as_deref().map(Arc::from);
        let routes = config
            .routes
            .iter()
            .map(|r| {
                Ok(CompiledRoute {
                    matcher: Glob::new(&r.event)?.compile_matcher(),
                    target: Arc::from(r.target.as_str()),
                    focus: r.focus.as_deref().map(Arc::from).or_else(|| focus.clone()),
                })
            })
            .collect::<Result<Vec<_>, globset::Error>>()?;
        let default = default_target.map(|t| RouteMatch {
            target: Arc::from(t),
            focus: focus.clone(),
        });
        Ok(Self { routes, default })
    }

    pub fn route(&self, event_name: &str) -> Option<RouteMatch> {
        self.routes
            .iter()
            .find(|r| r.matcher.is_match(event_name))
            .map(|r| RouteMatch {
                target: r.target.clone(),
                focus: r.focus.clone(),
            })
            .or_else(|| self.default.clone())
    }
}

/// The routes of one batch's event names. A batch carries a few event names, so each is
/// matched once, and the target and focus names are the batch's own copies: every message
/// holds them until its record is written, and names shared by the whole pipeline would
/// have their reference counts written by every worker for every message.
#[derive(Debug, Default)]
pub(crate) struct BatchRoutes(Vec<(Box<str>, RouteMatch)>);

impl BatchRoutes {
    /// Beyond this many distinct names a batch routes each message on its own: scanning a
    /// long list would cost more than matching.
    const MAX_NAMES: usize = 8;

    pub fn route(&mut self, router: &Router, event_name: &str) -> Option<RouteMatch> {
        if let Some((_, found)) = self.0.iter().find(|(name, _)| **name == *event_name) {
            return Some(found.clone());
        }
        let found = router.route(event_name)?;
        if self.0.len() >= Self::MAX_NAMES {
            return Some(found);
        }
        let own = RouteMatch {
            target: Arc::from(&*found.target),
            focus: found.focus.as_deref().map(Arc::from),
        };
        self.0.push((event_name.into(), own.clone()));
        Some(own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use qt_core::config::{Route, TargetConfig};

    fn config(routes: &[(&str, &str, Option<&str>)], default: Option<&str>) -> AgentConfig {
        let mut c = AgentConfig::default();
        for (_, t, _) in routes {
            c.targets.insert((*t).to_owned(), TargetConfig::Log);
        }
        if let Some(d) = default {
            c.targets.insert(d.to_owned(), TargetConfig::Log);
        }
        c.routes = routes
            .iter()
            .map(|(e, t, f)| Route {
                event: (*e).to_owned(),
                target: (*t).to_owned(),
                focus: f.map(str::to_owned),
            })
            .collect();
        c.default_target = default.map(str::to_owned);
        c.focus = Some("global-focus".to_owned());
        c
    }

    #[test]
    fn first_match_wins_then_default() {
        let c = config(
            &[
                ("order.*", "orders", Some("billing")),
                ("order.created", "never", None),
                ("user.*", "users", None),
            ],
            Some("fallback"),
        );
        let r = Router::new(&c, c.effective_default_target()).unwrap();
        assert_eq!(&*r.route("order.created").unwrap().target, "orders");
        assert_eq!(r.route("order.created").unwrap().focus.as_deref(), Some("billing"));
        assert_eq!(r.route("user.deleted").unwrap().focus.as_deref(), Some("global-focus"));
        assert_eq!(&*r.route("other").unwrap().target, "fallback");
        let strict = Router::new(&config(&[("order.*", "orders", None)], None), None).unwrap();
        assert_eq!(strict.route("other"), None);
    }

    #[test]
    fn a_batch_routes_every_name_as_the_router_does() {
        let c = config(
            &[("order.*", "orders", Some("billing")), ("user.*", "users", None)],
            None,
        );
        let r = Router::new(&c, c.effective_default_target()).unwrap();
        let mut batch = BatchRoutes::default();
        // More distinct names than the batch keeps, each asked twice, and unrouted ones.
        let names: Vec<String> = (0..12)
            .flat_map(|i| [format!("order.{i}"), format!("user.{i}"), format!("other.{i}")])
            .collect();
        for name in names.iter().chain(&names) {
            assert_eq!(batch.route(&r, name), r.route(name), "{name}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Event routing: an event whose name starts with a route's prefix goes to that
        /// route's target; anything else goes to the default (or nowhere).
        #[test]
        fn events_reach_their_route(prefixes in prop::collection::btree_set("[a-z]{3,6}", 1..5), suffix in "[a-z0-9]{1,8}", pick in 0usize..5, other in "[0-9]{3,6}") {
            let prefixes: Vec<String> = prefixes.into_iter().collect();
            let routes: Vec<(String, String)> = prefixes.iter().map(|p| (format!("{p}.*"), format!("t-{p}"))).collect();
            let refs: Vec<(&str, &str, Option<&str>)> = routes.iter().map(|(e, t)| (e.as_str(), t.as_str(), None)).collect();
            let router = Router::new(&config(&refs, None), None).unwrap();
            let p = &prefixes[pick % prefixes.len()];
            let hit = router.route(&format!("{p}.{suffix}")).unwrap();
            let want = format!("t-{p}");
            prop_assert_eq!(&*hit.target, want.as_str());
            prop_assert_eq!(router.route(&other), None);
        }
    }
}
