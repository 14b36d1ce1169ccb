output "regions" {
  description = "Per region: API URL, beacon and mesh addresses."
  value = {
    for k, m in module.region : k => {
      api_url = m.api_url
      beacon  = m.beacon
      mesh    = m.mesh
    }
  }
}
