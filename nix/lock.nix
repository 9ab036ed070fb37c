# `nix run .#lock -- HOST [--flake REF] [--lock FILE]`: evaluates a host's
# services.quorate settings to JSON (exactly what the module writes to
# /etc/quorate/cluster.json) and runs `quorate lock` on it, so that quorate.lock stays in
# the repository next to flake.lock.
{ writeShellApplication, quorate, nix }:

writeShellApplication {
  name = "quorate-lock";
  runtimeInputs = [ quorate nix ];
  text = ''
    usage() {
      echo "usage: nix run .#lock -- HOST [--flake REF] [--lock FILE] [--check]" >&2
      echo "  HOST   a nixosConfigurations entry with services.quorate enabled" >&2
      echo "  --flake REF  the flake that defines it (default: .)" >&2
      echo "  --lock FILE  the lock to create or update (default: ./quorate.lock)" >&2
      echo "  --check      only check that the lock is up to date (exit 1 if not)" >&2
      exit 2
    }
    host="" flake="." lock="quorate.lock" check=()
    while [ $# -gt 0 ]; do
      case "$1" in
        --flake) flake="''${2:?}"; shift 2 ;;
        --lock) lock="''${2:?}"; shift 2 ;;
        --check) check=(--check); shift ;;
        -h|--help) usage ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) host="$1"; shift ;;
      esac
    done
    [ -n "$host" ] || usage
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' EXIT
    nix --extra-experimental-features 'nix-command flakes' eval --raw \
      "$flake#nixosConfigurations.\"$host\".config.services.quorate.generatedSpec" > "$dir/cluster.json"
    quorate lock "$dir/cluster.json" --lock "$lock" "''${check[@]}"
  '';
}
