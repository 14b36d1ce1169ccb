output "regions" {
  description = "Per region: API URL, beacon and mesh addresses, instance and public IP."
  value = {
    for k, n in local.nodes : k => {
      api_url     = n.api_url
      beacon      = n.beacon
      mesh        = n.mesh
      instance_id = n.instance_id
      public_ip   = n.public_ip
    }
  }
}

output "api_url" {
  description = "The latency-routed API address clients use by default."
  value       = "http://api.${var.domain}"
}
