# Evaluates nix/module.nix with nixpkgs' lib alone (no pkgs, no NixOS) and returns what
# the module produces for one host, as JSON-able data. Used by the Rust tests through
# `nix-instantiate --eval --strict --json`:
#
#   nix-instantiate --eval --strict --json nix/tests/eval-module.nix \
#     --arg lib 'import /path/to/nixpkgs/lib' \
#     --arg host '{ imports = [ ./examples/nixos/cluster.nix ]; networking.hostName = "alpha"; }'
#
# The NixOS options the module sets (systemd.services, environment.etc, the firewall,
# assertions, …) are declared here as loose options, so the real module is evaluated by
# the real module system. `pkgs` is a value that fails when touched: evaluating the
# settings, /etc files, firewall and unit options must not need it.
{ lib, host, specOnly ? false, checkWith ? null, guests ? false, ceph ? false, package ? { type = "derivation"; name = "quorate"; outPath = "/nix/store/00000000000000000000000000000000-quorate"; } }:
let
  inherit (lib) mkOption types;
  loose = type: default: mkOption { inherit type default; };
  # An attribute set whose values are taken as defined, without forcing them (a unit's
  # `path` needs pkgs; its serviceConfig does not).
  lazyAttrs = types.submodule { freeformType = types.lazyAttrsOf types.raw; };
  nixosStubs = {
    options = {
      assertions = loose (types.listOf types.unspecified) [ ];
      warnings = loose (types.listOf types.str) [ ];
      networking.hostName = loose types.str "nixos";
      networking.firewall = {
        allowedTCPPorts = loose (types.listOf types.port) [ ];
        allowedUDPPorts = loose (types.listOf types.port) [ ];
        allowedTCPPortRanges = loose (types.listOf (types.attrsOf types.port)) [ ];
        interfaces = loose (types.attrsOf types.raw) { };
      };
      networking.wireguard.interfaces = loose (types.attrsOf types.raw) { };
      environment.etc = loose (types.attrsOf lazyAttrs) { };
      environment.variables = loose (types.attrsOf types.str) { };
      environment.systemPackages = loose (types.listOf types.raw) [ ];
      systemd.services = loose (types.attrsOf lazyAttrs) { };
      systemd.tmpfiles.rules = loose (types.listOf types.str) [ ];
      systemd.packages = loose (types.listOf types.raw) [ ];
      system.checks = loose (types.listOf types.raw) [ ];
    };
  };
  # With `guests = true`: the options of NixOS containers and microvm.nix, as a host
  # that uses them has (a host without them must evaluate too).
  guestStubs = {
    options = {
      containers = loose (types.attrsOf lazyAttrs) { };
      microvm.vms = loose (types.attrsOf lazyAttrs) { };
    };
  };
  # With `ceph = true`: NixOS's services.ceph, as a host has it.
  cephStubs = {
    options.services.ceph = loose (types.attrsOf types.raw) { };
  };
  noPkgs = throw "evaluating quorate's settings, /etc files or unit options must not need pkgs";
  # checkWith = a directory holding a built `quorate`: just enough of pkgs to build the
  # module's check derivation (system.checks) with the host's /bin/sh, unsandboxed.
  checkPkgs = {
    runCommand = name: env: script: derivation ((removeAttrs env [ "nativeBuildInputs" ]) // {
      inherit name;
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = [ "-ec" script ];
      PATH = "${checkWith}:/usr/bin:/bin";
    });
  };
  evaluated = lib.evalModules {
    modules = [
      nixosStubs
      (if guests then guestStubs else { })
      (if ceph then cephStubs else { })
      ../module.nix
      host
      {
        _module.args.pkgs = if checkWith == null then noPkgs else checkPkgs;
        services.quorate.package = lib.mkDefault package;
      }
    ];
  };
  config = evaluated.config;
  failed = builtins.filter (a: !a.assertion) config.assertions;
  unit = config.systemd.services.quorate;
in
# specOnly: just the generated cluster.json text (what `nix run .#lock` locks), before
# any assertion, so that a lock can be created for a host that has none yet.
if specOnly then
  config.services.quorate.generatedSpec
# checkWith: the build-time check derivation and the node's rendered files (built by
# the tests with nix-build; outputs in this order).
else if checkWith != null then {
  check = builtins.head config.system.checks;
  files = builtins.head config.systemd.packages;
}
else if failed != [ ] then
  throw "Failed assertions:\n${lib.concatMapStringsSep "\n" (a: "- ${a.message}") failed}"
else {
  enabled = config.services.quorate.enable;
  spec = config.environment.etc."quorate/cluster.json".text;
  lockInstalled = config.environment.etc ? "quorate/quorate.lock";
  firewall = {
    tcp = config.networking.firewall.allowedTCPPorts;
    udp = config.networking.firewall.allowedUDPPorts;
    tcpRanges = config.networking.firewall.allowedTCPPortRanges;
    interfaces = config.networking.firewall.interfaces;
  };
  wireguard = config.networking.wireguard.interfaces;
  tmpfiles = config.systemd.tmpfiles.rules;
  # The other units the module touches, with what it sets on them.
  managedUnits = builtins.mapAttrs (_: u: u.wantedBy) (removeAttrs config.systemd.services [ "quorate" "quorate-apply" ]);
  apply = let a = config.systemd.services.quorate-apply or null; in
    if a == null then null else {
      inherit (a) wantedBy after requires environment;
      restartTriggers = map toString a.restartTriggers;
      serviceConfig = a.serviceConfig;
      script = a.script;
    };
  etcFiles = builtins.attrNames config.environment.etc;
  ceph = config.services.ceph or null;
  variables = config.environment.variables;
  systemPackages = map (p: p.name or "?") config.environment.systemPackages;
  # Counted without forcing them: the check derivation needs pkgs.
  checks = builtins.foldl' (n: d: n + builtins.length d) 0 evaluated.options.system.checks.definitions;
  unit = {
    inherit (unit) wantedBy wants after environment;
    serviceConfig = unit.serviceConfig;
    restartTriggers = map toString (unit.restartTriggers or [ ]);
  };
}
