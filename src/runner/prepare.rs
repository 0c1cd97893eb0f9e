//! Before a run: its image looked up (or pulled) and held, its scratch directory created, the
//! sandbox spec assembled from the run spec and the image's rules.

use std::path::{Path, PathBuf};

use super::*;
use crate::ids::{image_ownership, Caller};
use crate::sandbox::SandboxSpec;
use crate::store::progress::Observer;
use crate::store::{ImageHold, PullOptions, PullPolicy, ResolvedImage, Store};

/// What a run needs before the tool starts.
pub(super) struct Prepared {
    pub(super) sandbox: SandboxSpec,
    pub(super) image: Option<ImageRef>,
    pub(super) _hold: Option<ImageHold>,
    pub(super) scratch: Option<scratch::Scratch>,
    pub(super) outputs: Vec<String>,
    pub(super) output_dir: Option<PathBuf>,
    pub(super) tenant: Option<String>,
    pub(super) work_dir: String,
}

impl Prepared {
    /// Applies the image's rules to the spec and holds its cache entry for the run.
    pub(super) fn use_image(
        &mut self,
        store: &Store,
        img: ResolvedImage,
        spec: &RunSpec,
    ) -> Result<(), Error> {
        let hold = store
            .hold(&img)
            .map_err(|e| Error::from_store(&img.reference, &e))?;
        apply_image(
            &mut self.sandbox,
            &img.config,
            spec.entrypoint.as_deref(),
            &spec.args,
        )?;
        self.sandbox.rootfs = img.rootfs.clone();
        self.image = Some(ImageRef {
            reference: img.reference,
            digest: img.digest,
        });
        self._hold = Some(hold);
        Ok(())
    }

    /// Creates the scratch (after the image, whose rootfs decides nothing here, but whose
    /// failure should leave nothing behind) and adds its mounts.
    pub(super) fn create_scratch(&mut self, root: &Path, run_id: &str) -> Result<(), Error> {
        let owner = nix::unistd::geteuid().is_root().then(|| {
            let base = self
                .sandbox
                .root_id_base
                .unwrap_or(crate::ids::DEFAULT_ROOT_ID_BASE);
            (base, base)
        });
        let s = scratch::Scratch::create(root, self.tenant.as_deref(), run_id, owner)?;
        self.sandbox.binds.extend(s.binds(&self.work_dir));
        // Tools write their results where they stand: unless the spec or the image says
        // otherwise, that is the work directory.
        if self.sandbox.cwd.is_none() {
            self.sandbox.cwd = Some(self.work_dir.clone());
        }
        self.scratch = Some(s);
        Ok(())
    }
}

/// Checks `spec` and turns what it says (with the runtime's defaults) into a sandbox spec;
/// creates nothing.
pub(super) fn prepare_base(inner: &Inner, spec: &RunSpec, run_id: &str) -> Result<Prepared, Error> {
    let mut seen = std::collections::HashSet::new();
    for i in &spec.inputs {
        scratch::check_name("input", &i.name)?;
        if !seen.insert(i.name.as_str()) {
            return Err(Error::bad_spec(format!(
                "input {:?} is given twice",
                i.name
            )));
        }
    }
    for o in &spec.outputs {
        scratch::check_name("output", o)?;
    }
    if spec.uses_scratch() && !spec.work_dir.starts_with('/') {
        return Err(Error::bad_spec(format!(
            "work directory {:?} must be an absolute path",
            spec.work_dir
        )));
    }
    let defaults = SandboxSpec::default();
    let mut s = SandboxSpec {
        args: spec.args.clone(),
        env: spec.env.clone(),
        cwd: spec.workdir.clone(),
        user: spec.user.clone(),
        hostname: spec.hostname.clone(),
        binds: spec.binds.clone(),
        tmpfs: spec.tmpfs.clone(),
        tmp_size: spec.tmp_size.unwrap_or(defaults.tmp_size),
        network: spec.network.unwrap_or(inner.network),
        net: spec.net.clone(),
        userns: spec.userns,
        root_id_base: spec.uid_base,
        proc: spec.proc,
        limits: spec.limits.clone().unwrap_or_else(|| inner.limits.clone()),
        cap_add: spec.cap_add.clone(),
        cap_drop: spec.cap_drop.clone(),
        seccomp: spec.seccomp.clone(),
        timeout: spec.timeout,
        stop_timeout: spec.stop_timeout.unwrap_or(defaults.stop_timeout),
        ..defaults
    };
    s.stdin = !matches!(spec.stdin, Stdin::Null);
    s.tty = spec.tty;
    s.stop_signal = spec.stop_signal.clone();
    s.ulimits = spec.ulimits.clone();
    s.shm_size = spec.shm_size;
    s.group_add = spec.group_add.clone();
    s.state_dir = Some(inner.root.clone());
    s.run_id = Some(run_id.to_string());
    crate::sandbox::plan::check(&s).map_err(|e| Error::bad_spec(e.to_string()))?;
    if let Source::Rootfs(dir) = &spec.source {
        s.rootfs = vec![dir.clone()];
        if s.args.is_empty() {
            return Err(Error::bad_spec("no command given: pass one after `--`"));
        }
    }
    Ok(Prepared {
        sandbox: s,
        image: None,
        _hold: None,
        scratch: None,
        outputs: spec.outputs.clone(),
        output_dir: spec.output_dir.clone(),
        tenant: spec.labels.get("tenant").cloned(),
        work_dir: spec.work_dir.clone(),
    })
}

pub(super) fn pull_options(
    inner: &Inner,
    spec: &RunSpec,
    observer: Option<Observer>,
) -> PullOptions {
    PullOptions {
        platform: inner.platform.clone(),
        ownership: image_ownership(Caller::current(), spec.uid_base),
        registry: inner.registry.clone(),
        limits: inner.image_limits,
        observer,
        ..Default::default()
    }
}

/// The cached image, or `None` when the policy says to pull.
pub(super) fn lookup(
    inner: &Inner,
    reference: &str,
    policy: PullPolicy,
    opts: &PullOptions,
) -> Result<Option<ResolvedImage>, Error> {
    if policy == PullPolicy::Always {
        return Ok(None);
    }
    match inner.store()?.lookup(reference, opts) {
        Ok(Some(img)) => Ok(Some(img)),
        Ok(None) if policy == PullPolicy::Never => Err(Error::from_store(
            reference,
            &crate::store::StoreError::NotFound(reference.to_string()),
        )),
        Ok(None) => Ok(None),
        Err(e) => Err(Error::from_store(reference, &e)),
    }
}
