# The cluster, declared once and imported by every host (see flake.nix). The same
# cluster as ../homelab/quorate.toml, in Nix: the keys are quorate.toml's keys.
#
# After changing it, refresh the lock and commit both:
#   nix run .#lock -- alpha
{
  services.quorate = {
    enable = true;
    lockFile = ./quorate.lock;
    openFirewall = true;

    settings = {
      cluster = {
        name = "homelab";
        timings = {
          heartbeat = "100ms";
          election_timeout = "500ms";
          lease_ttl = "1.5s";
          drift_margin = "500ms";
        };
      };

      nodes = {
        alpha = { address = "192.168.1.11"; labels = { rack = "shelf"; disk = "ssd"; }; wireguard.public_key = "PbebX3sHIVb9WIQL3GXQfBgdTHiZsPgEdXhvrtwPLGI="; };
        beta = { address = "192.168.1.12"; labels = { rack = "shelf"; disk = "ssd"; }; wireguard.public_key = "TXDy/EEZcjRSOtLvSYdAacfXysP37N3fPbti4XvmUAs="; };
        gamma = { address = "192.168.1.13"; labels = { rack = "closet"; disk = "hdd"; }; wireguard.public_key = "Rk5+rdpIx7UNmCOcFLae75r8z1rQStdJ7E/gbp58EiI="; };
      };

      network = {
        transport = "wireguard";
        overlay = "10.99.0.0/24";
        port = 7400;
      };

      storage.pgdata = {
        kind = "drbd";
        nodes = [ "alpha" "beta" ]; # gamma becomes the diskless tie-breaker
        device = "/dev/disk/by-partlabel/pgdata";
        size = "50GiB";
        mount = "/var/lib/postgresql";
        fs = "ext4";
      };

      storage.media = {
        kind = "gluster";
        nodes = [ "alpha" "beta" "gamma" ];
        brick = "/srv/bricks/media";
        mount = "/srv/media";
      };

      services.db = {
        kind = "systemd";
        unit = "postgresql.service";
        storage = [ "pgdata" ];
        ip = "192.168.1.50/24";
        interface = "eth0";
        prefer = [ "alpha" ];
        health = { kind = "tcp"; address = "127.0.0.1:5432"; interval = "5s"; timeout = "2s"; };
        restart = { max_restarts = 3; window = "10m"; };
      };

      services.web = {
        kind = "systemd";
        unit = "nginx.service";
        after = [ "db" ];
        storage = [ "media" ];
        ip = "192.168.1.51/24";
        interface = "eth0";
        health = { kind = "http"; url = "http://127.0.0.1/healthz"; };
      };

      services.homeassistant = {
        kind = "nspawn";
        container = "hass";
        prefer = [ "gamma" ];
        anti_affinity = [ "db" ];
      };

      services.ci-runner = {
        kind = "microvm";
        vm = "ci-runner";
        avoid = [ "gamma" ];
      };
    };
  };
}
