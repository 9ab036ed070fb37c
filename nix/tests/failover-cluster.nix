# The cluster of the NixOS VM test (failover.nix). Its lock, failover.lock, is checked
# to be up to date by the Rust tests (crates/cli/tests/nix_module.rs).
{
  services.quorate = {
    enable = true;
    lockFile = ./failover.lock;
    openFirewall = true;
    settings = {
      cluster.name = "vmtest";
      # The test driver numbers the VMs' addresses by sorted node name.
      nodes = {
        alpha.address = "192.168.1.1";
        beta.address = "192.168.1.2";
        gamma.address = "192.168.1.3";
      };
      services.witness = {
        kind = "systemd";
        unit = "witness.service";
        prefer = [ "alpha" ];
      };
    };
  };
}
