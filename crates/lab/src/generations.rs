//! Trivial NixOS-like system generations for deploy tests and benchmarks, built
//! without nixpkgs by nix-bin in a chroot store of the lab's own (no daemon, no
//! nixbld group, no binary cache). A generation is a `derivation` with
//! `bin/switch-to-configuration`, which appends `NAME ACTION` to the node's
//! `/nix/var/switches` (after `switch_seconds`, and fails when asked), `bin/healthy`
//! (the health check: exit 0 or 1) and an optional random `payload` of some MiB, so
//! that copies move real bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What a generation does.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Its name (and the store path's).
    pub name: String,
    /// Its activation exits 1.
    pub switch_fails: bool,
    /// Its `bin/healthy` exits 0.
    pub healthy: bool,
    /// Its activation sleeps this long first.
    pub switch_seconds: u32,
    /// MiB of random bytes in `payload`.
    pub payload_mib: u32,
}

impl Generation {
    /// A healthy generation that activates at once.
    #[must_use]
    pub fn good(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            switch_fails: false,
            healthy: true,
            switch_seconds: 0,
            payload_mib: 0,
        }
    }
}

const EXPRESSION: &str = r#"
{ name, switchFails ? false, healthy ? true, switchSeconds ? 0, payloadMiB ? 0
, system ? builtins.currentSystem }:
derivation {
  inherit name system;
  builder = "/bin/sh";
  args = [ "-c" ''
    export PATH=/bin
    mkdir -p $out/bin
    printf '#!/bin/sh\nsleep ${toString switchSeconds}\necho "${name} $1" >> /nix/var/switches\n${if switchFails then "echo activation of ${name} failed >&2; exit 1" else "exit 0"}\n' > $out/bin/switch-to-configuration
    printf '#!/bin/sh\n${if healthy then "exit 0" else "echo ${name} is unhealthy >&2; exit 1"}\n' > $out/bin/healthy
    chmod +x $out/bin/switch-to-configuration $out/bin/healthy
    if [ ${toString payloadMiB} -gt 0 ]; then head -c ${toString payloadMiB}M /dev/urandom > $out/payload; fi
  '' ];
}
"#;

/// Nix set up for a lab in `dir`: a private config and a build store.
#[derive(Clone, Debug)]
pub struct NixBuilds {
    dir: PathBuf,
    conf: PathBuf,
    /// The chroot store the generations are built in (`nix copy --from`).
    pub store: String,
}

impl NixBuilds {
    /// Writes the config under `dir`.
    ///
    /// # Errors
    /// Nix is not installed, or the files cannot be written.
    pub fn new(dir: &Path) -> Result<Self, String> {
        Command::new("nix-build")
            .arg("--version")
            .output()
            .map_err(|e| format!("nix-build: {e} (apt-get install nix-bin)"))?;
        let conf = dir.join("nix-conf");
        std::fs::create_dir_all(&conf).map_err(|e| e.to_string())?;
        // The build sandbox gets the host's /bin/sh and coreutils.
        std::fs::write(
            conf.join("nix.conf"),
            "build-users-group =\nsubstituters =\nextra-sandbox-paths = /usr /bin=/usr/bin /lib=/usr/lib /lib64=/usr/lib64\n",
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(dir.join("generation.nix"), EXPRESSION).map_err(|e| e.to_string())?;
        Ok(Self {
            dir: dir.to_owned(),
            store: format!("local?root={}", dir.join("build").display()),
            conf,
        })
    }

    /// The environment every `nix` (and `quorate deploy`) run of the lab needs.
    pub fn env<'c>(&self, c: &'c mut Command) -> &'c mut Command {
        c.env("NIX_CONF_DIR", &self.conf)
            .env("HOME", &self.dir)
            .env("NIX_PAGER", "cat")
    }

    /// Writes a flake (`<dir>/flake`) whose
    /// `nixosConfigurations.NODE.config.system.build.toplevel` is a good generation
    /// named `PREFIX-NODE` for each of `nodes`; its reference (`path:…`).
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn flake(&self, prefix: &str, nodes: &[String]) -> Result<String, String> {
        let dir = self.dir.join("flake");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("generation.nix"), EXPRESSION).map_err(|e| e.to_string())?;
        let names: Vec<String> = nodes.iter().map(|n| format!("{n:?}")).collect();
        std::fs::write(
            dir.join("flake.nix"),
            format!(
                "{{\n  outputs = {{ self }}: {{\n    nixosConfigurations = builtins.listToAttrs (map (n: {{\n      name = n;\n      value.config.system.build.toplevel = import ./generation.nix {{ name = \"{prefix}-${{n}}\"; system = \"{}-linux\"; }};\n    }}) [ {} ]);\n  }};\n}}\n",
                std::env::consts::ARCH,
                names.join(" ")
            ),
        )
        .map_err(|e| e.to_string())?;
        Ok(format!("path:{}", dir.display()))
    }

    /// Builds `g`; its store path.
    ///
    /// # Errors
    /// The build fails.
    pub fn build(&self, g: &Generation) -> Result<String, String> {
        let nix_bool = |b: bool| if b { "true" } else { "false" };
        let mut c = Command::new("nix-build");
        c.args(["--store", &self.store, "--no-out-link"])
            .arg(self.dir.join("generation.nix"))
            .args(["--argstr", "name", &g.name])
            .args(["--arg", "switchFails", nix_bool(g.switch_fails)])
            .args(["--arg", "healthy", nix_bool(g.healthy)])
            .args(["--arg", "switchSeconds", &g.switch_seconds.to_string()])
            .args(["--arg", "payloadMiB", &g.payload_mib.to_string()]);
        let out = self.env(&mut c).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "nix-build {}: {}",
                g.name,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}
