//! The model repository, Triton style:
//!
//! ```text
//! models/<name>/config.toml          role, feature input, score output, batching
//! models/<name>/<version>/model.onnx  one folder per version, numeric
//! models/<name>/<version>/golden.json optional: vets the version before it serves
//! ```
//!
//! Folders without a `config.toml` (the catalog, the training script) are
//! not models. Every version found is loaded and vetted at start; the
//! highest version that loaded and passed its golden set serves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::backend::{self, Backend, BackendKind, BackendOptions};
use super::golden::{GoldenSet, Vetting};
use super::spec::ModelSpec;
use super::ModelError;

/// One loaded version of a model.
pub struct LoadedModel {
    pub name: String,
    pub version: u64,
    pub spec: Arc<ModelSpec>,
    pub backend: Box<dyn Backend>,
    pub vetting: Option<Vetting>,
}

/// A version folder's state after loading.
pub enum VersionState {
    Ready(Arc<LoadedModel>),
    /// Failed to load or to pass vetting; never serves. The reason is shown
    /// by the admin API and logged.
    Failed(String),
}

/// A model and all of its versions.
pub struct ModelEntry {
    pub name: String,
    pub spec: Arc<ModelSpec>,
    pub backend: BackendKind,
    pub versions: BTreeMap<u64, VersionState>,
    /// The version that answers unversioned requests.
    pub serving: u64,
}

impl ModelEntry {
    pub fn serving(&self) -> Arc<LoadedModel> {
        match self.versions.get(&self.serving) {
            Some(VersionState::Ready(m)) => m.clone(),
            _ => unreachable!("an entry is only built with a ready serving version"),
        }
    }
}

/// How models are loaded: which backend, where the runtime lives.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub default_backend: BackendKind,
    pub backend_overrides: BTreeMap<String, BackendKind>,
    pub backend: BackendOptions,
}

/// All models, by name. Readers take a cheap snapshot of an entry; a reload
/// (later) swaps whole entries, so no request sees a half-loaded model.
pub struct Registry {
    root: PathBuf,
    models: RwLock<BTreeMap<String, Arc<ModelEntry>>>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn read_text(path: &Path, shown: &str) -> Result<String, ModelError> {
    std::fs::read_to_string(path).map_err(|e| ModelError::load(shown, e))
}

impl Registry {
    /// Scans `root` and loads every model and version. Any model that has no
    /// version able to serve is an error naming the file and the reason.
    pub fn load(root: &Path, options: &LoadOptions) -> Result<Registry, ModelError> {
        let entries =
            std::fs::read_dir(root).map_err(|e| ModelError::load(root.display().to_string(), e))?;
        let mut names: Vec<String> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ModelError::load(root.display().to_string(), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().join("config.toml").is_file() {
                if !valid_name(&name) {
                    return Err(ModelError::load(
                        name,
                        "model names may use only letters, digits, '_', '-' and '.'",
                    ));
                }
                names.push(name);
            }
        }
        names.sort();
        for name in options.backend_overrides.keys() {
            if !names.contains(name) {
                return Err(ModelError::load(
                    format!("models.overrides.{name}"),
                    "no such model in the repository",
                ));
            }
        }
        let mut models = BTreeMap::new();
        for name in names {
            let entry = load_model(root, &name, options)?;
            models.insert(name, Arc::new(entry));
        }
        Ok(Registry {
            root: root.to_path_buf(),
            models: RwLock::new(models),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Snapshot of every entry, in name order.
    pub fn entries(&self) -> Vec<Arc<ModelEntry>> {
        self.models
            .read()
            .expect("registry lock poisoned")
            .values()
            .cloned()
            .collect()
    }

    pub fn entry(&self, name: &str) -> Result<Arc<ModelEntry>, ModelError> {
        self.models
            .read()
            .expect("registry lock poisoned")
            .get(name)
            .cloned()
            .ok_or_else(|| ModelError::NotFound(name.to_string()))
    }

    /// The serving version of `name`, or the given version if it is ready.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<LoadedModel>, ModelError> {
        let entry = self.entry(name)?;
        let Some(v) = version else {
            return Ok(entry.serving());
        };
        let not_found = || ModelError::VersionNotFound {
            name: name.to_string(),
            version: v.to_string(),
        };
        let n: u64 = v.parse().map_err(|_| not_found())?;
        match entry.versions.get(&n) {
            Some(VersionState::Ready(m)) => Ok(m.clone()),
            _ => Err(not_found()),
        }
    }
}

fn load_model(root: &Path, name: &str, options: &LoadOptions) -> Result<ModelEntry, ModelError> {
    let dir = root.join(name);
    let config_shown = format!("{name}/config.toml");
    let spec = Arc::new(ModelSpec::parse(
        &read_text(&dir.join("config.toml"), &config_shown)?,
        &config_shown,
    )?);
    let kind = options
        .backend_overrides
        .get(name)
        .copied()
        .unwrap_or(options.default_backend);

    let mut version_numbers = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| ModelError::load(name, e))? {
        let entry = entry.map_err(|e| ModelError::load(name, e))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() {
            match file_name.parse::<u64>() {
                Ok(v) if v > 0 => version_numbers.push(v),
                _ => tracing::debug!(model = name, folder = file_name, "not a version folder"),
            }
        }
    }
    version_numbers.sort_unstable();
    if version_numbers.is_empty() {
        return Err(ModelError::load(
            name,
            "no version folders (expected e.g. 1/model.onnx)",
        ));
    }

    let mut versions = BTreeMap::new();
    let mut last_error = None;
    for v in version_numbers {
        match load_version(&dir, name, v, &spec, kind, &options.backend) {
            Ok(model) => {
                tracing::info!(model = name, version = v, backend = %kind, "model version ready");
                versions.insert(v, VersionState::Ready(Arc::new(model)));
            }
            Err(e) => {
                tracing::error!(model = name, version = v, error = %e, "model version will not serve");
                versions.insert(v, VersionState::Failed(e.to_string()));
                last_error = Some(e);
            }
        }
    }
    let serving = versions
        .iter()
        .rev()
        .find(|(_, s)| matches!(s, VersionState::Ready(_)))
        .map(|(v, _)| *v);
    match serving {
        Some(serving) => Ok(ModelEntry {
            name: name.to_string(),
            spec,
            backend: kind,
            versions,
            serving,
        }),
        None => Err(last_error.expect("at least one version failed")),
    }
}

/// Loads, checks, warms up and vets one version.
fn load_version(
    dir: &Path,
    name: &str,
    version: u64,
    spec: &Arc<ModelSpec>,
    kind: BackendKind,
    options: &BackendOptions,
) -> Result<LoadedModel, ModelError> {
    let vdir = dir.join(version.to_string());
    let file = vdir.join("model.onnx");
    let shown = format!("{name}/{version}/model.onnx");
    if !file.is_file() {
        return Err(ModelError::load(shown, "file not found"));
    }
    let backend = backend::load(kind, &file, &shown, options)?;
    spec.check_signature(
        backend.inputs(),
        backend.outputs(),
        &format!("{name}/config.toml"),
    )?;
    warm_up(backend.as_ref()).map_err(|e| ModelError::load(&shown, format!("warm-up: {e}")))?;

    let golden_file = vdir.join("golden.json");
    let vetting = if golden_file.is_file() {
        let golden_shown = format!("{name}/{version}/golden.json");
        let golden = GoldenSet::parse(&read_text(&golden_file, &golden_shown)?, &golden_shown)?;
        let vetting = golden.vet(spec, backend.as_ref());
        if !vetting.passed {
            return Err(ModelError::load(
                golden_shown,
                format!("vetting failed: {}", vetting.detail),
            ));
        }
        Some(vetting)
    } else {
        None
    };
    Ok(LoadedModel {
        name: name.to_string(),
        version,
        spec: spec.clone(),
        backend,
        vetting,
    })
}

/// One inference on a single all-zero row, so the first real request does
/// not pay for lazy initialisation and a model that cannot run is caught
/// at load time.
fn warm_up(backend: &dyn Backend) -> Result<(), ModelError> {
    let inputs = backend
        .inputs()
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec.shape.iter().map(|d| d.unwrap_or(1)).collect();
            let n: usize = shape.iter().product();
            let zeros = vec![0u8; n * spec.datatype.size_bytes()];
            super::Tensor::new(
                &spec.name,
                shape,
                super::TensorData::from_le_bytes(spec.datatype, &zeros),
            )
        })
        .collect();
    backend.run(inputs).map(|_| ())
}
