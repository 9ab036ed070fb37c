# A three-node quorate cluster (alpha, beta, gamma) as a NixOS flake. Copy this
# directory, point the `quorate` input at quorate's repository, replace the hardware
# stubs in hosts/ with your machines' hardware-configuration.nix, then:
#
#   nix run .#lock -- alpha              # allocate quorate.lock from cluster.nix
#   nixos-rebuild switch --flake .#alpha --target-host root@alpha   (and beta, gamma)
#
# The spec is checked when the systems build: a bad spec or a stale lock fails
# `nixos-rebuild build` with quorate's own error text.
{
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    # In your copy: quorate.url = "github:<owner>/quorate";
    quorate.url = "path:../..";
    quorate.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs = { self, nixpkgs, quorate }:
    let
      host = name: nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [
          quorate.nixosModules.default
          ./cluster.nix
          ./hosts/${name}.nix
          { networking.hostName = name; }
        ];
      };
    in
    {
      nixosConfigurations = nixpkgs.lib.genAttrs [ "alpha" "beta" "gamma" ] host;

      # `nix run .#lock -- alpha`: quorate's lock app, run against this flake.
      apps = quorate.apps;
    };
}
