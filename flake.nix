{
  description = "quorate: one declarative spec, one binary, one NixOS module for a quorum-backed cluster";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f (import nixpkgs {
        inherit system;
        overlays = [ self.overlays.default ];
      }));
    in
    {
      overlays.default = final: _prev: {
        quorate = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (pkgs: {
        default = pkgs.quorate;
        quorate = pkgs.quorate;
        lock = pkgs.callPackage ./nix/lock.nix { };
      });

      # The module; its package defaults to this flake's build.
      nixosModules.default = { pkgs, lib, ... }: {
        imports = [ ./nix/module.nix ];
        services.quorate.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };

      apps = forAllSystems (pkgs: {
        default = self.apps.${pkgs.stdenv.hostPlatform.system}.quorate;
        quorate = { type = "app"; program = "${pkgs.quorate}/bin/quorate"; };
        lock = { type = "app"; program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.lock}/bin/quorate-lock"; };
      });

      checks = forAllSystems (pkgs: {
        package = pkgs.quorate;
        failover = import ./nix/tests/failover.nix { inherit pkgs; module = self.nixosModules.default; };
        drbd = import ./nix/tests/drbd.nix { inherit pkgs; module = self.nixosModules.default; };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ pkgs.quorate ];
          packages = with pkgs; [ cargo rustc clippy rustfmt rust-analyzer iproute2 wireguard-tools drbd glusterfs ];
        };
      });
    };
}
