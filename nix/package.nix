# The quorate package (the overlay's `quorate`, the flake's packages.default).
{ lib, rustPlatform }:

rustPlatform.buildRustPackage {
  pname = "quorate";
  version = (lib.importTOML ../Cargo.toml).workspace.package.version;

  src = lib.fileset.toSource {
    root = ./..;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../crates
      ../bench
      ../examples
    ];
  };
  cargoLock.lockFile = ../Cargo.lock;

  cargoBuildFlags = [ "--package" "quorate" ];
  # The test suite starts clusters, network namespaces and glusterd as root; it runs in
  # CI (scripts/test.sh) and the NixOS VM tests (checks), not in the build sandbox.
  doCheck = false;

  meta = {
    description = "One declarative spec, one binary: a quorum-backed cluster that keeps services running on exactly one node";
    license = lib.licenses.asl20;
    mainProgram = "quorate";
    platforms = lib.platforms.linux;
  };
}
