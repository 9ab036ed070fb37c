# NixOS VM test: three nodes run quorate from the module; a systemd service runs on one
# of them; that node loses power; the service runs on another node, and never on two.
#
#   nix build .#checks.x86_64-linux.failover -L      (or: nix flake check)
{ pkgs, module }:

pkgs.testers.runNixOSTest {
  name = "quorate-failover";

  defaults = { pkgs, ... }: {
    imports = [ module ./failover-cluster.nix ];
    environment.systemPackages = [ pkgs.jq pkgs.curl ];
    # The witness is started and stopped by quorate only: no wantedBy.
    systemd.services.witness = {
      description = "quorate test witness";
      serviceConfig.ExecStart = "${pkgs.python3}/bin/python3 -m http.server 8080 --directory /etc";
    };
    networking.firewall.allowedTCPPorts = [ 8080 ];
    virtualisation.memorySize = 1024;
  };

  nodes = {
    alpha = { };
    beta = { };
    gamma = { };
  };

  testScript = import ./bootstrap.nix "vmtest" + ''

    def status(m):
        return json.loads(m.succeed("quorate status --json"))

    def witness(m):
        [svc] = [s for s in status(m)["services"] if s["name"] == "witness"]
        return svc

    alpha.wait_until_succeeds(
        "quorate status --json | jq -e '.services[] | select(.name == \"witness\" and .state == \"running\")'",
        timeout=120,
    )
    first = witness(alpha)["node"]
    nodes[first].succeed("systemctl is-active witness.service")
    for name, m in nodes.items():
        if name != first:
            m.fail("systemctl is-active witness.service")

    # Power loss of the node that runs it.
    nodes[first].crash()
    survivors = {n: m for n, m in nodes.items() if n != first}
    observer = next(iter(survivors.values()))
    observer.wait_until_succeeds(
        f"quorate status --json | jq -e '.services[] | select(.name == \"witness\" and .state == \"running\" and .node != \"{first}\")'",
        timeout=60,
    )
    second = witness(observer)["node"]
    survivors[second].succeed("systemctl is-active witness.service")
    survivors[second].succeed("curl -sf http://127.0.0.1:8080/quorate/cluster.json >/dev/null")
    for name, m in survivors.items():
        if name != second:
            m.fail("systemctl is-active witness.service")
  '';
}
