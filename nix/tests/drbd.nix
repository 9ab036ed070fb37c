# NixOS VM test with the DRBD kernel module (real hosts only; this project's CI kernel
# has none): quorate brings the resource up (metadata on the empty disk), promotes it
# on the node that runs `db`, makes the filesystem once and mounts it; the service
# writes there; its node loses power; `db` runs on the other replica and finds the data.
#
#   nix build .#checks.x86_64-linux.drbd -L
{ pkgs, module }:

pkgs.testers.runNixOSTest {
  name = "quorate-drbd";

  defaults = { config, pkgs, ... }: {
    imports = [ module ./drbd-cluster.nix ];
    environment.systemPackages = [ pkgs.jq pkgs.drbd ];
    # DRBD 9 (node-ids, connection-mesh, quorum) is an out-of-tree module.
    boot.extraModulePackages = [ config.boot.kernelPackages.drbd ];
    boot.kernelModules = [ "drbd" ];
    virtualisation.emptyDiskImages = [ 512 ];
    virtualisation.memorySize = 1024;
    # The witness: appends a line per second to the DRBD-backed mount. Started only by
    # quorate (after storage and mount).
    systemd.services.witness-db = {
      description = "quorate DRBD test witness";
      serviceConfig.ExecStart = "${pkgs.bash}/bin/bash -c 'while :; do echo \"$(hostname) $(date +%s%N)\" >> /srv/data/log; sync /srv/data/log; sleep 1; done'";
    };
  };

  nodes = {
    alpha = { };
    beta = { };
    gamma = { };
  };

  testScript = import ./bootstrap.nix "vmdrbd" + ''

    # The rendered resource is installed and valid on every DRBD node.
    for m in nodes.values():
        m.succeed("drbdadm sh-nop")

    def db():
        s = json.loads(alpha.succeed("quorate status --json"))
        return next(x for x in s["services"] if x["name"] == "db")

    alpha.wait_until_succeeds(
        "quorate status --json | jq -e '.services[] | select(.name == \"db\" and .state == \"running\")'",
        timeout=180,
    )
    first = db()["node"]
    assert first in ("alpha", "beta"), first
    nodes[first].succeed("drbdadm role data | grep -q Primary")
    nodes[first].wait_until_succeeds("test $(wc -l < /srv/data/log) -ge 3")
    written = int(nodes[first].succeed("wc -l < /srv/data/log").strip())

    nodes[first].crash()
    other = "beta" if first == "alpha" else "alpha"
    nodes[other].wait_until_succeeds(
        f"quorate status --json | jq -e '.services[] | select(.name == \"db\" and .state == \"running\" and .node == \"{other}\")'",
        timeout=120,
    )
    nodes[other].succeed("drbdadm role data | grep -q Primary")
    # Everything the first node synced is there, and the service goes on writing.
    nodes[other].succeed(f"test $(grep -c {first} /srv/data/log) -ge {written}")
    nodes[other].wait_until_succeeds(f"grep -q {other} /srv/data/log")
  '';
}
