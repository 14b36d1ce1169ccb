# The nodes of one AWS region (the provider passed in). One instance per region file.

locals {
  # Graviton instance families (c7g, m7g, t4g, ...) are arm64.
  arch = { for k, r in var.regions : k => can(regex("^[a-z][0-9]+g[a-z]*\\.", r.cloud.instance_type)) ? "aarch64" : "x86_64" }
}

# The same description and plan-time validation as terraform/local, without running anything.
module "node" {
  source   = "../../modules/region-node"
  for_each = var.regions

  region_file     = "${var.regions_dir}/${each.key}.json"
  region          = each.value
  peers           = { for k, r in var.all_regions : "${var.regions_dir}/${k}.json" => r if k != each.key }
  seeds           = [for k, r in var.all_regions : "${r.public_host}:${r.ports.mesh}" if k != each.key]
  release_version = var.release_version
  meridian_bin    = "/usr/local/bin/meridian"
  ca_dir          = "/etc/meridian/ca"
  data_dir        = "/var/lib/meridian"
  regions_dir     = "/etc/meridian/regions"
  admin_token     = var.admin_token
  run_local       = false
}

data "aws_ssm_parameter" "ami" {
  for_each = toset(values(local.arch))
  name     = var.ami_ssm_parameter[each.key]
}

data "aws_vpc" "default" {
  default = true
}

data "aws_subnets" "default" {
  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.default.id]
  }
}

resource "aws_eip" "node" {
  for_each = var.regions
  domain   = "vpc"
  tags     = { Name = "meridian-${each.key}" }
}

# Exactly the region file's four ports: API (TCP), game, beacon and mesh (UDP). The mesh is
# only open to the other nodes' addresses.
resource "aws_security_group" "node" {
  for_each    = var.regions
  name        = "meridian-${each.key}"
  description = "Meridian region node ${each.key}: API, game, beacon and mesh ports"
  vpc_id      = data.aws_vpc.default.id

  ingress {
    description = "HTTP API"
    protocol    = "tcp"
    from_port   = each.value.ports.http
    to_port     = each.value.ports.http
    cidr_blocks = var.api_cidrs
  }
  ingress {
    description = "game traffic"
    protocol    = "udp"
    from_port   = each.value.ports.game
    to_port     = each.value.ports.game
    cidr_blocks = var.api_cidrs
  }
  ingress {
    description = "beacon (nearest-region pings)"
    protocol    = "udp"
    from_port   = each.value.ports.beacon
    to_port     = each.value.ports.beacon
    cidr_blocks = var.api_cidrs
  }
  ingress {
    description = "region mesh (QUIC, mutual TLS)"
    protocol    = "udp"
    from_port   = each.value.ports.mesh
    to_port     = each.value.ports.mesh
    cidr_blocks = var.mesh_cidrs
  }
  egress {
    protocol    = "-1"
    from_port   = 0
    to_port     = 0
    cidr_blocks = ["0.0.0.0/0"]
  }
}

# Certificates and the admin token as SecureString parameters the instance reads at boot.
resource "aws_ssm_parameter" "secret" {
  for_each = merge([
    for k, r in var.regions : {
      "${k}/ca.pem"      = file("${var.certs_dir}/ca.pem")
      "${k}/node.pem"    = file("${var.certs_dir}/${k}/node.pem")
      "${k}/node.key"    = file("${var.certs_dir}/${k}/node.key")
      "${k}/admin_token" = var.admin_token
    }
  ]...)
  name  = "/meridian/${each.key}"
  type  = "SecureString"
  value = each.value
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  for_each           = var.regions
  name               = "meridian-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.assume.json
}

resource "aws_iam_role_policy" "node" {
  for_each = var.regions
  role     = aws_iam_role.node[each.key].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["ssm:GetParameter"]
      Resource = [for p in ["ca.pem", "node.pem", "node.key", "admin_token"] : aws_ssm_parameter.secret["${each.key}/${p}"].arn]
    }]
  })
}

resource "aws_iam_role_policy_attachment" "ssm_core" {
  for_each   = var.regions
  role       = aws_iam_role.node[each.key].name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "node" {
  for_each = var.regions
  name     = "meridian-${each.key}"
  role     = aws_iam_role.node[each.key].name
}

resource "aws_instance" "node" {
  for_each               = var.regions
  ami                    = data.aws_ssm_parameter.ami[local.arch[each.key]].value
  instance_type          = each.value.cloud.instance_type
  subnet_id              = data.aws_subnets.default.ids[0]
  vpc_security_group_ids = [aws_security_group.node[each.key].id]
  iam_instance_profile   = aws_iam_instance_profile.node[each.key].name
  key_name               = var.ssh_key_name

  # A new release or region file replaces the instance (user data changes).
  user_data_replace_on_change = true
  user_data = templatefile("${path.module}/user-data.sh.tftpl", {
    name         = each.key
    arch         = local.arch[each.key]
    release_url  = replace(replace(var.release_url, "%s", var.release_version), "%a", local.arch[each.key])
    sha256       = var.release_sha256[local.arch[each.key]]
    region_files = { for k, r in var.all_regions : k => jsonencode(r) }
    # The node's settings from the module, minus the secret (read from SSM at boot).
    env = { for k, v in module.node[each.key].node_env : k => v if k != "MERIDIAN_ADMIN_TOKEN" }
  })

  root_block_device {
    volume_size = 30
    volume_type = "gp3"
    encrypted   = true
  }

  tags = { Name = "meridian-${each.key}", MeridianRelease = var.release_version }
}

resource "aws_eip_association" "node" {
  for_each      = var.regions
  allocation_id = aws_eip.node[each.key].id
  instance_id   = aws_instance.node[each.key].id
}
