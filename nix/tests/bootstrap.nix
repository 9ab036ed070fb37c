# The start of both NixOS VM tests' scripts: boot alpha, beta and gamma, make one CA
# and a certificate per node on alpha as an operator would, deliver each to its node's
# data dir (secret tooling does this in production), and wait until every agent has
# joined (Type=notify: the unit is active once it has). Leaves `nodes` (name → machine)
# and `json` for the rest of the script.
clusterName: ''
  import json

  nodes = {"alpha": alpha, "beta": beta, "gamma": gamma}
  start_all()
  for m in nodes.values():
      m.wait_for_unit("multi-user.target")

  alpha.succeed("quorate ca init /root/ca --cluster ${clusterName}")
  for name, m in nodes.items():
      alpha.succeed(f"quorate ca issue {name} --ca /root/ca --out /root/tls-{name}")
      bundle = alpha.succeed(f"tar -C /root/tls-{name} -c . | base64 -w0").strip()
      m.succeed(f"mkdir -p /var/lib/quorate/tls && echo {bundle} | base64 -d | tar -C /var/lib/quorate/tls -x")
      m.succeed("systemctl restart quorate.service")
  for m in nodes.values():
      m.wait_for_unit("quorate.service")
''
