locals {
  name        = var.region.name
  public_host = var.region.public_host
  bind_host   = var.region.bind_host
  ports       = var.region.ports

  api_url = "http://${local.public_host}:${local.ports.http}"
  beacon  = "${local.public_host}:${local.ports.beacon}"
  mesh    = "${local.public_host}:${local.ports.mesh}"
  game    = "${local.public_host}:${local.ports.game}"

  # IPv6 literals need brackets in socket addresses.
  bind_ip = strcontains(local.bind_host, ":") ? "[${local.bind_host}]" : local.bind_host

  data_dir = abspath(var.data_dir)
  cert_dir = "${local.data_dir}/certs/${local.name}"

  # The node's settings (docs/configuration.md). Seeds come from Terraform, not from the
  # node's own catalog scan, so the plan shows exactly whom a new node joins through.
  node_env = merge({
    MERIDIAN_REGION               = local.name
    MERIDIAN_NODE_NAME            = local.name
    MERIDIAN_REGIONS_DIR          = abspath(var.regions_dir)
    MERIDIAN_HTTP_ADDR            = "${local.bind_ip}:${local.ports.http}"
    MERIDIAN_GAME_ADDR            = "${local.bind_ip}:${local.ports.game}"
    MERIDIAN_BEACON_ADDR          = "${local.bind_ip}:${local.ports.beacon}"
    MERIDIAN_MESH_ADDR            = "${local.bind_ip}:${local.ports.mesh}"
    MERIDIAN_MESH__AUTO_DEV_CERTS = "false"
    MERIDIAN_MESH__CA_DIR         = abspath(var.ca_dir)
    MERIDIAN_MESH__CERT_DIR       = local.cert_dir
    MERIDIAN_MESH__SEED_CATALOG   = "false"
    MERIDIAN_MESH__SEEDS          = jsonencode(var.seeds)
    MERIDIAN_ADMIN_TOKEN          = var.admin_token
    MERIDIAN_LOG_FORMAT           = "json"
    MERIDIAN_RELEASE              = var.release_version
    # The regions of the first apply found the economy together; a region
    # added later sees the cluster and is given voter seats by the leaders.
    MERIDIAN_ECONOMY__BOOTSTRAP_EXPECT = tostring(length(var.seeds) + 1)
  }, var.extra_env)
}

# The local runner: one detached `meridian up` per region. Creating it issues the node
# certificate, starts the process and waits for /readyz (failing with the log tail);
# destroying it sends SIGTERM (drain, graceful SWIM leave) and waits for the exit.
# A replacement is blue/green (create_before_destroy): the new instance starts with
# `meridian up --takeover` while the old one runs and takes its listener over in place; the
# old instance's destroy then finds its own process gone (pid files per instance).
resource "terraform_data" "node" {
  count = var.run_local ? 1 : 0

  # What restarts the node. Seeds are deliberately absent: adding or removing another
  # region must not restart this one (the mesh gossips the new member to it).
  triggers_replace = {
    region          = jsonencode(var.region)
    release_version = var.release_version
    meridian_bin    = abspath(var.meridian_bin)
    data_dir        = local.data_dir
    ca_cert_sha256  = try(filesha256("${abspath(var.ca_dir)}/ca.pem"), "")
    settings_sha256 = sha256(jsonencode([var.admin_token, var.extra_env, abspath(var.regions_dir)]))
  }

  # Everything the destroy-time provisioner needs (it may only read self).
  input = {
    name         = local.name
    data_dir     = local.data_dir
    api_url      = local.api_url
    scripts_dir  = abspath("${path.module}/scripts")
    stop_timeout = tostring(var.stop_timeout_s)
  }

  lifecycle {
    create_before_destroy = true
    precondition {
      condition     = fileexists("${abspath(var.ca_dir)}/ca.pem") && fileexists("${abspath(var.ca_dir)}/ca.key")
      error_message = "ca_dir: no cluster CA in ${abspath(var.ca_dir)} (ca.pem, ca.key); create it with: meridian certs init --dir ${abspath(var.ca_dir)}"
    }
    precondition {
      condition     = fileexists(abspath(var.meridian_bin))
      error_message = "meridian_bin: ${abspath(var.meridian_bin)} does not exist; build it with: cargo build --release -p meridian"
    }
  }

  provisioner "local-exec" {
    command = "${abspath("${path.module}/scripts")}/node-up.sh"
    environment = merge(local.node_env, {
      NODE_BIN        = abspath(var.meridian_bin)
      NODE_NAME       = local.name
      NODE_DATA_DIR   = local.data_dir
      NODE_CA_DIR     = abspath(var.ca_dir)
      NODE_CERT_DIR   = local.cert_dir
      NODE_CERT_DAYS  = tostring(var.cert_days)
      NODE_PROBE_HOST = local.public_host
      NODE_PROBE_PORT = tostring(local.ports.http)
      NODE_READY_S    = tostring(var.ready_timeout_s)
      NODE_STOP_S     = tostring(var.stop_timeout_s)
      NODE_PEER_COUNT = tostring(length(var.seeds))
      NODE_RELEASE    = var.release_version
      NODE_ENV_KEYS   = join(" ", sort(keys(local.node_env)))
      NODE_INSTANCE   = self.id
    })
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.input.scripts_dir}/node-down.sh"
    environment = {
      NODE_NAME     = self.input.name
      NODE_DATA_DIR = self.input.data_dir
      NODE_STOP_S   = self.input.stop_timeout
      NODE_INSTANCE = self.id
    }
  }
}
