// Optional App Configuration store the app bootstraps from (AZURE_APPCONFIG_ENDPOINT; the app
// reads keys under 'completions:'). Access keys are off: the app's identity reads with
// App Configuration Data Reader; the developer, who writes the keys, gets Data Owner.
param name string
param location string
param tags object = {}
param identityPrincipalId string
@description('Developer (or CI) principal; empty for none.')
param developerPrincipalId string = ''
@allowed(['User', 'ServicePrincipal', 'Group'])
param developerPrincipalType string = 'User'

var role = loadJsonContent('roles.json')

// API version: learn.microsoft.com/azure/templates/microsoft.appconfiguration/2023-03-01/configurationstores
resource store 'Microsoft.AppConfiguration/configurationStores@2023-03-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'standard'
  }
  properties: {
    disableLocalAuth: true
    // Off, so that `azd down --purge` removes the store (settings only; secrets belong in Key
    // Vault references); otherwise its name stays taken by the soft-deleted store for 7 days.
    enablePurgeProtection: false
    publicNetworkAccess: 'Enabled'
  }
}

resource identityReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(store.id, identityPrincipalId, role.AppConfigurationDataReader)
  scope: store
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.AppConfigurationDataReader)
  }
}

resource developerOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(developerPrincipalId)) {
  name: guid(store.id, developerPrincipalId, role.AppConfigurationDataOwner)
  scope: store
  properties: {
    principalId: developerPrincipalId
    principalType: developerPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.AppConfigurationDataOwner)
  }
}

output name string = store.name
output endpoint string = store.properties.endpoint
