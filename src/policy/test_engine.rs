//! For the engine tests: an engine plus the one generation they run, which `reload` replaces
//! (the gateway keeps the generation in each request's snapshot instead).

use super::*;

/// The engine and the generation the tests run: what the gateway keeps in each request's
/// snapshot, held here in one slot that `reload` replaces.
pub(super) struct Live {
    engine: Arc<PolicyEngine>,
    current: Mutex<Arc<CompiledPolicy>>,
    settings: PolicySettings,
}

impl Live {
    pub(super) fn load(
        scripts: Vec<(String, String)>,
        settings: PolicySettings,
    ) -> Result<Arc<Live>, Vec<PolicyError>> {
        let engine = PolicyEngine::new(settings.shared_max_keys);
        let first = engine.compile(1, scripts, &settings)?;
        Ok(Arc::new(Live {
            engine,
            current: Mutex::new(first),
            settings,
        }))
    }
    pub(super) fn current(&self) -> Arc<CompiledPolicy> {
        self.current.lock().clone()
    }
    pub(super) fn reload(&self, scripts: Vec<(String, String)>) -> Result<u64, Vec<PolicyError>> {
        let next = self
            .engine
            .compile(self.generation() + 1, scripts, &self.settings)?;
        let g = next.generation;
        *self.current.lock() = next;
        Ok(g)
    }
    pub(super) fn generation(&self) -> u64 {
        self.current().generation
    }
    pub(super) fn has_hook(&self, hook: Hook) -> bool {
        self.current().has_hook(hook)
    }
    pub(super) fn shared(&self) -> &Arc<SharedDict> {
        self.engine.shared()
    }
    pub(super) fn last_error(&self) -> Option<String> {
        self.engine.last_error()
    }
    pub(super) fn admit(
        &self,
        req: &dyn RequestSource,
        host: Arc<dyn PolicyHost>,
    ) -> (PolicyDecision, Outcome) {
        self.engine.admit(&self.current(), req, host)
    }
    pub(super) fn route(
        &self,
        req: &dyn RequestSource,
        host: Arc<dyn PolicyHost>,
    ) -> (PolicyDecision, Outcome) {
        self.engine.route(&self.current(), req, host)
    }
    pub(super) fn response(
        &self,
        req: &dyn RequestSource,
        resp: &dyn ResponseSource,
        host: Arc<dyn PolicyHost>,
    ) -> (ResponseEdit, Outcome) {
        self.engine.response(&self.current(), req, resp, host)
    }
    pub(super) fn log(
        &self,
        req: &dyn RequestSource,
        resp: &dyn ResponseSource,
        host: Arc<dyn PolicyHost>,
    ) -> Outcome {
        self.engine.log(&self.current(), req, resp, host)
    }
}
