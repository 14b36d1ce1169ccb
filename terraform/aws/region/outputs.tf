output "public_ips" {
  description = "Elastic IPs of this AWS region's nodes."
  value       = [for e in aws_eip.node : e.public_ip]
}

output "nodes" {
  description = "Per region file: what the root needs for DNS and outputs."
  value = {
    for k, r in var.regions : k => {
      public_ip   = aws_eip.node[k].public_ip
      instance_id = aws_instance.node[k].id
      aws_region  = r.cloud.region
      http_port   = r.ports.http
      api_url     = module.node[k].api_url
      beacon      = module.node[k].beacon
      mesh        = module.node[k].mesh
    }
  }
}
