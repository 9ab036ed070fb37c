# The quorate NixOS module: `services.quorate`.
#
# The cluster spec is written in Nix under `services.quorate.settings` (the same keys as
# quorate.toml, RFC 42 style: common keys are typed options, everything else is free-form
# JSON). The module writes it to /etc/quorate/cluster.json, installs the lock file next to
# it, checks both with quorate's own `check` and `lock --check` at build time (a bad spec
# fails `nixos-rebuild build` with quorate's error text) and runs the agent as a
# `Type=notify` systemd service with a watchdog.
#
# Evaluating the options, /etc files, firewall and unit settings needs nixpkgs' `lib`
# only; `pkgs` is used for the package, the unit's PATH and the build-time check.
{ config, lib, pkgs, options, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;

  cfg = config.services.quorate;
  settings = cfg.settings;

  # A JSON value, as `pkgs.formats.json` defines it (without needing pkgs).
  jsonValue =
    let
      valueType = types.nullOr (types.oneOf [
        types.bool
        types.int
        types.float
        types.str
        types.path
        (types.attrsOf valueType)
        (types.listOf valueType)
      ]) // { description = "JSON value"; };
    in
    valueType;
  freeform = types.attrsOf jsonValue;

  hostLabel = types.strMatching "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?";
  optionalStr = description: mkOption {
    type = types.nullOr types.str;
    default = null;
    inherit description;
  };
  names = description: mkOption {
    type = types.nullOr (types.listOf types.str);
    default = null;
    inherit description;
  };

  nodeType = types.submodule {
    freeformType = freeform;
    options = {
      address = mkOption {
        type = types.str;
        example = "192.168.1.11";
        description = "The node's IP address on the cluster network (the port is `network.port`).";
      };
      voter = mkOption {
        type = types.nullOr types.bool;
        default = null;
        description = "Whether the node votes in the cluster's quorum (quorate's default: true).";
      };
      workloads = mkOption {
        type = types.nullOr types.bool;
        default = null;
        description = "Whether the node runs services (quorate's default: true); `false` makes a witness that only votes, e.g. a Raspberry Pi beside two servers.";
      };
      wireguard.public_key = mkOption {
        type = types.nullOr (types.strMatching "[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=");
        default = null;
        example = "PbebX3sHIVb9WIQL3GXQfBgdTHiZsPgEdXhvrtwPLGI=";
        description = "The node's WireGuard public key (network.transport = \"wireguard\"): what `quorate wg keygen` printed on that node. Its private key stays in the node's data dir.";
      };
      labels = mkOption {
        type = types.nullOr (types.attrsOf types.str);
        default = null;
        example = { rack = "a"; disk = "ssd"; };
        description = "Labels that services `require` (a hard constraint) or prefer (`prefer_labels`).";
      };
    };
  };

  serviceType = types.submodule {
    freeformType = freeform;
    options = {
      kind = mkOption {
        type = types.enum [ "process" "systemd" "nspawn" "microvm" "lxc" ];
        description = "What runs the service: a systemd unit, an nspawn container, a MicroVM, or a process the agent starts.";
      };
      unit = optionalStr "kind = systemd: the unit quorate starts and stops (it must not be started by anything else).";
      container = optionalStr "kind = nspawn: the container name (`container@NAME.service`); kind = lxc: the LXC container (`lxc@NAME.service`).";
      vm = optionalStr "kind = microvm: the MicroVM name (`microvm@NAME.service`).";
      prefer = names "Nodes preferred for this service, in order.";
      avoid = names "Nodes this service runs on only when nothing else is left.";
      after = names "Services that must run (anywhere in the cluster) before this one starts.";
      anti_affinity = names "Services that must never run on the same node as this one.";
      storage = names "Storage resources this service needs (attached before it starts).";
      ip = optionalStr "A floating address `addr/prefix` that follows the service.";
      interface = optionalStr "The interface the floating address is added to.";
    };
  };

  storageType = types.submodule {
    freeformType = freeform;
    options = {
      kind = mkOption {
        type = types.enum [ "drbd" "gluster" "ceph-rbd" "cephfs" ];
        description = "Replicated storage kind.";
      };
      nodes = names "Replica nodes.";
      mount = optionalStr "Where the service's node mounts it.";
      device = optionalStr "drbd: the backing block device on each replica node.";
    };
  };

  # Option defaults of `null` mean "not set": they are left out of cluster.json so that
  # quorate's own defaults apply.
  withoutNulls = value:
    if builtins.isAttrs value then
      let kept = lib.mapAttrs (_: withoutNulls) (lib.filterAttrs (_: v: v != null) value); in
      # A group of options all left unset (`wireguard.public_key = null`) goes too.
      lib.filterAttrs (k: v: !(builtins.isAttrs v && v == { } && value.${k} != { })) kept
    else if builtins.isList value then
      map withoutNulls value
    else
      value;

  # JSON with one key per line, so that quorate's errors point at a readable line of
  # /etc/quorate/cluster.json.
  prettyJSON = indent: value:
    let inner = indent + "  "; in
    if builtins.isAttrs value && value != { } then
      "{\n" + lib.concatStringsSep ",\n" (lib.mapAttrsToList
        (k: v: "${inner}${builtins.toJSON k}: ${prettyJSON inner v}")
        value) + "\n${indent}}"
    else if builtins.isList value && value != [ ] then
      "[\n" + lib.concatMapStringsSep ",\n" (v: inner + prettyJSON inner v) value + "\n${indent}]"
    else
      builtins.toJSON value;

  specText = prettyJSON "" (withoutNulls settings) + "\n";
  # With a read-only group, the control socket lives where the group can reach it.
  readOnlySocket = "/run/quorate/control.sock";

  lock = if cfg.lockFile == null then null else builtins.fromJSON (builtins.readFile cfg.lockFile);

  nodeNames = builtins.attrNames settings.nodes;
  serviceNames = builtins.attrNames settings.services;
  storageNames = builtins.attrNames settings.storage;
  network = settings.network;
  clusterPort = if network.port == null then 7400 else network.port;
  wireguard = network.transport == "wireguard";

  storageOnThisNode = kind:
    lib.filterAttrs
      (_: s: s.kind == kind && (s.nodes == null || builtins.elem cfg.nodeName s.nodes))
      settings.storage;
  drbdHere = storageOnThisNode "drbd";
  glusterHere = storageOnThisNode "gluster";
  lockedStorage = name: if lock == null then null else lock.storage.${name} or null;
  drbdPortsHere = lib.filter (p: p != null) (lib.mapAttrsToList
    (name: _: (lockedStorage name).drbd.port or null)
    (lib.filterAttrs
      (name: s: s.kind == "drbd"
        && (builtins.elem cfg.nodeName (if s.nodes == null then [ ] else s.nodes)
          || ((lockedStorage name).drbd.tie_breaker or null) == cfg.nodeName))
      settings.storage));
  wgPort = if lock == null then null else lock.nodes.${cfg.nodeName}.wg_port or null;
  lockedNode = name: if lock == null then { } else lock.nodes.${name} or { };
  overlayPrefix = if network.overlay == null then "32" else lib.last (lib.splitString "/" network.overlay);
  # The mesh as `quorate render` describes it (crates/render, `mesh`): every other node
  # as a peer at its underlay address and locked port, accepted only from its overlay
  # address.
  wgPeers = lib.mapAttrsToList
    (name: n: {
      publicKey = n.wireguard.public_key;
      endpoint = (if lib.hasInfix ":" n.address then "[${n.address}]" else n.address)
        + ":${toString ((lockedNode name).wg_port or 0)}";
      allowedIPs = [ "${(lockedNode name).overlay_ip or "0.0.0.0"}/${if lib.hasInfix ":" ((lockedNode name).overlay_ip or "") then "128" else "32"}" ];
      persistentKeepalive = 5;
    })
    (lib.filterAttrs (name: _: name != cfg.nodeName) settings.nodes);
  meshReady = wireguard && lock != null && (lockedNode cfg.nodeName) ? overlay_ip;
  # Cluster ports: over WireGuard only on the mesh interface, never on the underlay.
  clusterTCPPorts = [ clusterPort ] ++ drbdPortsHere
    ++ lib.optionals (glusterHere != { }) [ 24007 24008 ];
  # glusterd gives each brick a port from 49152 up.
  clusterTCPRanges = lib.optional (glusterHere != { }) {
    from = 49152;
    to = 49152 + builtins.length (builtins.attrNames glusterHere) - 1;
  };

  # [ceph]: the roles as quorate fills in their defaults (crates/spec CephSpec), the
  # fsid and this node's OSD ids from the lock. NixOS's services.ceph runs the daemons;
  # `quorate ceph bootstrap` does the one-time steps.
  cephSpec = settings.ceph or null;
  cephDeclared = cephSpec != null && lock != null && lock ? ceph;
  orDefault = list: fallback: if list == null || list == [ ] then fallback else list;
  voterNames = builtins.filter (n: (settings.nodes.${n}.voter or null) != false) nodeNames;
  cephMonitors = if cephSpec == null then [ ] else orDefault (cephSpec.monitors or null) voterNames;
  cephManagers = if cephSpec == null then [ ] else orDefault (cephSpec.managers or null) cephMonitors;
  cephMetadata = if cephSpec == null then [ ] else orDefault (cephSpec.metadata_servers or null)
    (if (cephSpec.filesystems or [ ]) == [ ] then [ ] else lib.take 1 cephMonitors);
  cephOsdsHere = if cephDeclared then map (o: toString o.id) (lock.ceph.osds.${cfg.nodeName} or [ ]) else [ ];
  cephAddress = n:
    let node = settings.nodes.${n}; a = if (node.storage_address or null) != null then node.storage_address else node.address; in
    if lib.hasInfix ":" a then "[${a}]" else a;
  cephMonHost = lib.concatMapStringsSep "," (m: "[v2:${cephAddress m}:3300,v1:${cephAddress m}:6789]") cephMonitors;
  cephRole = role: builtins.elem cfg.nodeName role;
  cephDaemonsHere = cephRole cephMonitors || cephRole cephManagers || cephRole cephMetadata || cephOsdsHere != [ ];
  # Monitors: 3300 (msgr2) and 6789 (msgr1); OSDs, managers and MDSs: 6800-7300.
  cephTCPPorts = lib.optionals (cephDeclared && cephRole cephMonitors) [ 3300 6789 ];
  cephTCPRanges = lib.optional (cephDeclared && cephDaemonsHere) { from = 6800; to = 7300; };

  referenceChecks = lib.flatten (lib.mapAttrsToList
    (svc: s:
      map
        (field:
          let listed = if s.${field} == null then [ ] else s.${field}; in
          map
            (node: {
              assertion = builtins.elem node nodeNames;
              message = "services.quorate.settings.services.${svc}.${field}: unknown node `${node}` (nodes: ${lib.concatStringsSep ", " nodeNames}).";
            })
            listed)
        [ "prefer" "avoid" ]
      ++ [
        (map
          (st: {
            assertion = builtins.elem st storageNames;
            message = "services.quorate.settings.services.${svc}.storage: unknown storage `${st}` (storage: ${lib.concatStringsSep ", " storageNames}).";
          })
          (if s.storage == null then [ ] else s.storage))
        (map
          (dep: {
            assertion = builtins.elem dep serviceNames;
            message = "services.quorate.settings.services.${svc}.after: unknown service `${dep}`.";
          })
          (if s.after == null then [ ] else s.after))
      ])
    settings.services);

  inStore = path: path != null && lib.hasPrefix builtins.storeDir (toString path);

  # Runs quorate's own checks on the generated spec and the lock at build time.
  checkedSpec = pkgs.runCommand "quorate-${settings.cluster.name}-checked"
    {
      nativeBuildInputs = [ cfg.package ];
      passAsFile = [ "spec" ];
      spec = specText;
    }
    ''
      cp "$specPath" cluster.json
      cp ${cfg.lockFile} quorate.lock
      quorate check cluster.json
      quorate lock --check cluster.json
      mkdir -p $out && cp cluster.json quorate.lock $out/
    '';

  # This node's generated files (`quorate render`): DRBD resources and systemd drop-ins
  # for the units quorate manages, from the checked spec and lock.
  nodeFiles = pkgs.runCommand "quorate-${cfg.nodeName}-files" { nativeBuildInputs = [ cfg.package ]; } ''
    mkdir -p $out
    quorate render ${checkedSpec}/cluster.json --lock ${checkedSpec}/quorate.lock \
      --node ${cfg.nodeName} --out $out
  '';

  # Guests quorate starts where the cluster places them: their own autostart must be off.
  guestNames = kind: field: lib.filter (n: n != null)
    (lib.mapAttrsToList (_: s: if s.kind == kind then s.${field} else null) settings.services);
  autostartChecks =
    lib.optionals (options ? containers) (map
      (n: {
        assertion = !((config.containers.${n} or { }).autoStart or false);
        message = "containers.${n}.autoStart is true, but quorate runs `${n}` (kind = \"nspawn\") where the cluster places it: set containers.${n}.autoStart = false, or a second copy may start at boot.";
      })
      (guestNames "nspawn" "container"))
    ++ lib.optionals (options ? microvm && options.microvm ? vms) (map
      (n: {
        assertion = !((config.microvm.vms.${n} or { }).autostart or false);
        message = "microvm.vms.${n}.autostart is true (microvm.nix's default), but quorate runs `${n}` (kind = \"microvm\") where the cluster places it: set microvm.vms.${n}.autostart = false, or a second copy may start at boot.";
      })
      (guestNames "microvm" "vm"));

  # systemd services quorate starts and stops: never started at boot.
  managedUnits = lib.filter (u: u != null && lib.hasSuffix ".service" u)
    (lib.mapAttrsToList (_: s: if s.kind == "systemd" then s.unit else null) settings.services);
in
{
  options.services.quorate = {
    enable = mkEnableOption "the quorate cluster agent";

    package = mkOption {
      type = types.package;
      default = pkgs.quorate;
      defaultText = literalExpression "pkgs.quorate (from quorate's overlay or flake)";
      description = "The quorate package.";
    };

    settings = mkOption {
      description = ''
        The cluster spec, with the keys of quorate.toml (see `quorate schema`). It is the
        same on every node; put it in a file that every host imports.
      '';
      default = { };
      example = literalExpression ''
        {
          cluster.name = "homelab";
          nodes.alpha.address = "192.168.1.11";
          nodes.beta.address = "192.168.1.12";
          nodes.gamma.address = "192.168.1.13";
          services.web = { kind = "systemd"; unit = "nginx.service"; ip = "192.168.1.51/24"; interface = "eth0"; };
        }
      '';
      type = types.submodule {
        freeformType = freeform;
        options = {
          cluster = mkOption {
            description = "`[cluster]`: name and timings.";
            type = types.submodule {
              freeformType = freeform;
              options.name = mkOption {
                type = hostLabel;
                example = "homelab";
                description = "The cluster's name (lowercase letters, digits and `-`).";
              };
            };
          };
          nodes = mkOption {
            type = types.attrsOf nodeType;
            default = { };
            description = "`[nodes.<name>]`: every machine of the cluster, by host name.";
          };
          services = mkOption {
            type = types.attrsOf serviceType;
            default = { };
            description = "`[services.<name>]`: what the cluster keeps running on exactly one node.";
          };
          storage = mkOption {
            type = types.attrsOf storageType;
            default = { };
            description = "`[storage.<name>]`: replicated storage that follows its service.";
          };
          network = mkOption {
            default = { };
            description = "`[network]`: transport and port.";
            type = types.submodule {
              freeformType = freeform;
              options = {
                transport = mkOption {
                  type = types.nullOr (types.enum [ "direct" "wireguard" ]);
                  default = null;
                  description = "`direct` (quorate's default) or `wireguard`.";
                };
                overlay = optionalStr "Overlay network (CIDR) for the WireGuard mesh.";
                port = mkOption {
                  type = types.nullOr types.port;
                  default = null;
                  description = "Cluster RPC port (quorate's default: 7400).";
                };
                mtu = mkOption {
                  type = types.nullOr (types.ints.between 1280 9000);
                  default = null;
                  description = "MTU of the WireGuard interface `quorate0` (default: 1420, the usual underlay's 1500 − 80).";
                };
              };
            };
          };
        };
      };
    };

    generatedSpec = mkOption {
      type = types.str;
      readOnly = true;
      default = specText;
      defaultText = literalExpression "builtins.toJSON config.services.quorate.settings (unset keys left out)";
      description = "The spec as written to /etc/quorate/cluster.json (what `nix run .#lock` locks).";
    };

    lockFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = literalExpression "./quorate.lock";
      description = ''
        quorate.lock: the stable numbers (Raft ids, DRBD minors and ports, WireGuard ports)
        allocated for this spec. Create and update it with `nix run .#lock -- HOST` and
        commit it next to flake.lock.
      '';
    };

    nodeName = mkOption {
      type = types.str;
      default = config.networking.hostName;
      defaultText = literalExpression "config.networking.hostName";
      description = "This machine's name in `settings.nodes`.";
    };

    dataDir = mkOption {
      type = types.str;
      default = "/var/lib/quorate";
      description = "The agent's state: Raft log, identity, control socket.";
    };

    tls = {
      ca = mkOption {
        type = types.str;
        default = "${cfg.dataDir}/tls/ca.pem";
        defaultText = literalExpression ''"''${dataDir}/tls/ca.pem"'';
        description = "The cluster CA certificate (`quorate ca init`).";
      };
      cert = mkOption {
        type = types.str;
        default = "${cfg.dataDir}/tls/node.pem";
        defaultText = literalExpression ''"''${dataDir}/tls/node.pem"'';
        description = "This node's certificate (`quorate ca issue NODE`).";
      };
      key = mkOption {
        type = types.str;
        default = "${cfg.dataDir}/tls/node.key";
        defaultText = literalExpression ''"''${dataDir}/tls/node.key"'';
        description = "This node's private key: a file outside the Nix store (sops-nix, agenix, or written once by hand).";
      };
    };

    watchdog = {
      device = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/dev/watchdog";
        description = "A hardware watchdog the fence process pets; the node is reset if fenced workloads cannot be confirmed dead.";
      };
      serviceTimeout = mkOption {
        type = types.str;
        default = "10s";
        description = "systemd's `WatchdogSec` for the agent: systemd restarts an agent that stops answering.";
      };
    };

    logLevel = mkOption {
      type = types.str;
      default = "info";
      example = "quorate_agent=debug,info";
      description = "The agent's log level (`QUORATE_LOG`: `error`, `warn`, `info`, `debug`, or per-module directives). Under systemd the agent logs to journald with priorities: `journalctl -u quorate -p warning`.";
    };

    readOnlyGroup = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "wheel";
      description = "A group whose members may run `quorate status`, `events` and `explain` on this node without root (changes still need root). The control socket then lives at /run/quorate/control.sock, mode 0660, owned by this group.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open exactly the ports this node needs: the cluster port, its DRBD resources' ports, its WireGuard port, glusterd.";
    };
  };

  config = mkIf cfg.enable (lib.mkMerge [
  # NixOS's own Ceph module runs the declared Ceph's daemons on this node (where the
  # system has that module: a host without it evaluates too).
  (lib.optionalAttrs (options ? services && options.services ? ceph) {
    services.ceph = mkIf cephDeclared {
      enable = true;
      global = {
        fsid = lock.ceph.fsid;
        monInitialMembers = lib.concatStringsSep ", " cephMonitors;
        monHost = cephMonHost;
        publicNetwork = cephSpec.public_network;
      };
      extraConfig = { "auth allow insecure global id reclaim" = "false"; } // (cephSpec.config or { });
      mon = { enable = cephRole cephMonitors; daemons = lib.optional (cephRole cephMonitors) cfg.nodeName; };
      mgr = { enable = cephRole cephManagers; daemons = lib.optional (cephRole cephManagers) cfg.nodeName; };
      mds = { enable = cephRole cephMetadata; daemons = lib.optional (cephRole cephMetadata) cfg.nodeName; };
      osd = { enable = cephOsdsHere != [ ]; daemons = cephOsdsHere; };
      client.enable = true;
    };
  })
  {
    # Only quorate starts the units it manages.
    systemd.services = lib.genAttrs (map (lib.removeSuffix ".service") managedUnits)
      (_: { wantedBy = lib.mkForce [ ]; });
  }
  {
    assertions = [
      {
        assertion = settings.nodes ? ${cfg.nodeName};
        message = "services.quorate.nodeName: `${cfg.nodeName}` is not a node in services.quorate.settings.nodes (nodes: ${lib.concatStringsSep ", " nodeNames}); set services.quorate.nodeName or add the node.";
      }
      {
        assertion = cfg.lockFile != null;
        message = "services.quorate.lockFile is not set: create it with `nix run .#lock -- ${cfg.nodeName}` and set services.quorate.lockFile = ./quorate.lock.";
      }
      {
        assertion = lock == null || (lock.cluster or null) == settings.cluster.name;
        message = "services.quorate.lockFile belongs to cluster `${toString (lock.cluster or "?")}`, not `${settings.cluster.name}`: run `nix run .#lock` again.";
      }
      {
        assertion = lock == null || !(settings.nodes ? ${cfg.nodeName}) || (lock.nodes or { }) ? ${cfg.nodeName};
        message = "services.quorate.lockFile has no numbers for node `${cfg.nodeName}`: the lock is out of date; run `nix run .#lock -- ${cfg.nodeName}`.";
      }
      {
        assertion = !(inStore cfg.tls.key);
        message = "services.quorate.tls.key points into the Nix store, which every local user can read: keep it outside (sops-nix, agenix, or ${cfg.dataDir}/tls).";
      }
    ] ++ referenceChecks ++ autostartChecks;

    # The CLI on the node's PATH, pointed at this node's spec and data dir, so that
    # `quorate status` just works there.
    environment.systemPackages = [ cfg.package ];

    environment.etc."quorate/cluster.json".text = specText;
    environment.etc."quorate/quorate.lock" = mkIf (cfg.lockFile != null) { source = cfg.lockFile; };

    # A bad spec or stale lock fails the system build with quorate's own error text.
    system.checks = mkIf (cfg.lockFile != null) [ checkedSpec ];

    systemd.tmpfiles.rules = [ "d ${cfg.dataDir} 0700 root root -" ];

    # `quorate render` output: drop-ins (Restart=no) for the units quorate manages, and
    # the DRBD resources this node holds or tie-breaks.
    systemd.packages = mkIf (cfg.lockFile != null) [ nodeFiles ];
    environment.etc."drbd.d" = mkIf (cfg.lockFile != null && drbdPortsHere != [ ]) {
      source = "${nodeFiles}/etc/drbd.d";
    };
    environment.etc."drbd.conf" = mkIf (drbdPortsHere != [ ]) {
      text = lib.mkDefault "global { usage-count no; }\ninclude \"/etc/drbd.d/*.res\";\n";
    };


    networking.firewall = mkIf cfg.openFirewall ({
      # Ceph talks on its public network, never through the mesh.
      allowedTCPPorts = lib.optionals (!wireguard) clusterTCPPorts ++ cephTCPPorts;
      allowedUDPPorts = lib.optional (wireguard && wgPort != null) wgPort;
      allowedTCPPortRanges = lib.optionals (!wireguard) clusterTCPRanges ++ cephTCPRanges;
    } // lib.optionalAttrs wireguard {
      interfaces.quorate0 = {
        allowedTCPPorts = clusterTCPPorts;
        allowedTCPPortRanges = clusterTCPRanges;
      };
    });

    # The mesh (network.transport = "wireguard"): NixOS's own WireGuard interface, with
    # the private key from the data dir (`quorate wg keygen` on this node, once). The
    # agent keeps its peers equal to the applied spec between deploys (key rotations,
    # nodes added) with `wg syncconf`.
    networking.wireguard.interfaces = mkIf meshReady {
      quorate0 = {
        ips = [ "${(lockedNode cfg.nodeName).overlay_ip}/${overlayPrefix}" ];
        listenPort = wgPort;
        privateKeyFile = "${cfg.dataDir}/wireguard.key";
        peers = wgPeers;
      } // lib.optionalAttrs (network.mtu != null) { mtu = network.mtu; };
    };

    systemd.services.quorate = {
      description = "quorate cluster agent (node ${cfg.nodeName})";
      wantedBy = [ "multi-user.target" ];
      # Over WireGuard the agent binds its overlay address: the mesh comes first.
      wants = [ "network-online.target" ] ++ lib.optional meshReady "wireguard-quorate0.service";
      after = [ "network-online.target" ] ++ lib.optional meshReady "wireguard-quorate0.service";
      # No restartTriggers: a spec or lock change is applied to the running cluster by
      # quorate-apply.service below, never by restarting the agent. Only a new package
      # (a new ExecStart) restarts it, and that restart is fenced safely: KillMode=process
      # spares the fence and the workloads, the new agent adopts them.
      path = [ pkgs.iproute2 pkgs.util-linux pkgs.kmod ]
        # The storage steps run drbdadm, blkid, mkfs and mount.
        ++ lib.optionals (drbdHere != { } || drbdPortsHere != [ ]) [ pkgs.drbd pkgs.e2fsprogs pkgs.xfsprogs ]
        ++ lib.optional (glusterHere != { }) pkgs.glusterfs
        # The agent keeps the mesh's peers in sync and reads its handshakes.
        ++ lib.optional wireguard pkgs.wireguard-tools
        ++ lib.optional (pkgs ? arping) pkgs.arping;
      environment = {
        QUORATE_SPEC = "/etc/quorate/cluster.json";
        QUORATE_LOCK = "/etc/quorate/quorate.lock";
        QUORATE_NODE = cfg.nodeName;
        QUORATE_DATA_DIR = cfg.dataDir;
        QUORATE_CA = cfg.tls.ca;
        QUORATE_CERT = cfg.tls.cert;
        QUORATE_KEY = cfg.tls.key;
        QUORATE_LOG = cfg.logLevel;
      } // lib.optionalAttrs (cfg.watchdog.device != null) {
        QUORATE_WATCHDOG = cfg.watchdog.device;
      } // lib.optionalAttrs (cfg.readOnlyGroup != null) {
        QUORATE_READ_ONLY_GROUP = cfg.readOnlyGroup;
        QUORATE_SOCKET = readOnlySocket;
      };
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${cfg.package}/bin/quorate agent";
        Restart = "always";
        RestartSec = "1s";
        # `systemctl stop/restart`, a crash or a watchdog abort end the agent only: its
        # fence process keeps the lease deadline (and ignores SIGTERM until then) and
        # its workloads keep running until the next agent adopts them, or the fence
        # kills them at the deadline. The default (control-group) would kill the fence
        # while unit workloads and floating addresses live on, unfenced.
        KillMode = "process";
        # Process workloads get cgroups of their own below the agent's, so that nothing
        # they fork escapes a stop or the fence.
        Delegate = "yes";
        WatchdogSec = cfg.watchdog.serviceTimeout;
        TimeoutStopSec = "30s";
        # `systemctl reload quorate` reloads the node certificate, key and CA bundle
        # (SIGHUP) for new connections without a restart: quorum is never dropped.
        ExecReload = "/run/current-system/sw/bin/kill -HUP $MAINPID";
        # Peers, workloads and sockets: the default 1024 is too few under load or
        # attack; the agent bounds its own connections well below this.
        LimitNOFILE = 65536;
        UMask = "0077";
        # Hardening that leaves what the agent must do: manage units over D-Bus, add
        # addresses (netlink), mount filesystems *visibly to other units* and run
        # drbdadm/gluster. Everything that would give the agent its own mount namespace
        # (ProtectSystem, ProtectHome, PrivateTmp, PrivateDevices, ProtectKernelTunables,
        # ProtectControlGroups, ReadWritePaths) is left out on purpose: mounts made in a
        # private namespace would be invisible to the services that need them.
        NoNewPrivileges = true;
        LockPersonality = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        SystemCallArchitectures = "native";
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" "AF_PACKET" ];
        CapabilityBoundingSet = [
          "CAP_SYS_ADMIN" # mount, DRBD ioctls
          "CAP_NET_ADMIN" # floating addresses
          "CAP_NET_RAW" # gratuitous ARP
          "CAP_NET_BIND_SERVICE"
          "CAP_KILL" # fencing workloads
          "CAP_SYS_MODULE" # drbdadm loads the drbd module
          "CAP_DAC_OVERRIDE"
          "CAP_CHOWN"
          "CAP_FOWNER"
          "CAP_SETUID" # process workloads may drop privileges
          "CAP_SETGID"
        ];
      } // lib.optionalAttrs (cfg.readOnlyGroup != null) {
        # /run/quorate: root's, readable by all; the socket in it is 0660 and the group's.
        RuntimeDirectory = "quorate";
        RuntimeDirectoryMode = "0755";
      };
    };

    # The CLI on the node finds this node's spec, data dir and socket.
    environment.variables = {
      QUORATE_SPEC = "/etc/quorate/cluster.json";
      QUORATE_DATA_DIR = cfg.dataDir;
    } // lib.optionalAttrs (cfg.readOnlyGroup != null) {
      QUORATE_SOCKET = readOnlySocket;
    };

    # Activation applies a changed spec or lock to the running cluster (DESIGN
    # invariant 7): committed once a majority has it, the same spec on every node a
    # no-op, a destructive change refused with quorate's message (exit 3, which fails
    # this unit and shows in `nixos-rebuild switch`). Retries while the cluster has no
    # quorum yet (exit 4), e.g. at boot.
    systemd.services.quorate-apply = mkIf (cfg.lockFile != null) {
      description = "Apply /etc/quorate/cluster.json to the running quorate cluster";
      wantedBy = [ "multi-user.target" ];
      after = [ "quorate.service" ];
      requires = [ "quorate.service" ];
      restartTriggers = [ specText cfg.lockFile ];
      environment = {
        QUORATE_DATA_DIR = cfg.dataDir;
      };
      script = ''
        for attempt in $(seq 1 30); do
          status=0
          ${cfg.package}/bin/quorate apply /etc/quorate/cluster.json --lock /etc/quorate/quorate.lock || status=$?
          case $status in
            0) exit 0 ;;
            4) echo "no quorum yet (attempt $attempt of 30), retrying in 2 s"; sleep 2 ;;
            *) exit $status ;;
          esac
        done
        exit 4
      '';
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
    };
  }
  ]);
}
