# alpha: replace this stub with the machine's hardware-configuration.nix and the
# services quorate runs (postgresql, nginx, the hass container, the ci-runner MicroVM:
# defined here, started by quorate — do not add them to wantedBy).
{ lib, ... }: {
  boot.loader.grub.device = "/dev/sda";
  fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
  system.stateVersion = "25.05";

  services.postgresql.enable = true;
  services.nginx.enable = true;
}
