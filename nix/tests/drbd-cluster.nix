# The cluster of the NixOS DRBD VM test (drbd.nix): alpha and beta hold replicas of
# `data` on their second disk, gamma is the diskless tie-breaker. Its lock, drbd.lock,
# is checked to be up to date by the Rust tests.
{
  services.quorate = {
    enable = true;
    lockFile = ./drbd.lock;
    openFirewall = true;
    settings = {
      cluster.name = "vmdrbd";
      nodes = {
        alpha.address = "192.168.1.1";
        beta.address = "192.168.1.2";
        gamma.address = "192.168.1.3";
      };
      storage.data = {
        kind = "drbd";
        nodes = [ "alpha" "beta" ];
        device = "/dev/vdb";
        mount = "/srv/data";
        fs = "ext4";
      };
      services.db = {
        kind = "systemd";
        unit = "witness-db.service";
        storage = [ "data" ];
      };
    };
  };
}
