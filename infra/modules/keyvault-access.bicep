// Lets the app's identity read the secrets of an existing Key Vault (the caller keys'
// COMPLETIONS_CALLER_KEYS reference), in whatever resource group it lives in: Key Vault Secrets
// User, the narrowest built-in role that reads secret values. The vault must use Azure RBAC.
param vaultName string
param identityPrincipalId string

var role = loadJsonContent('roles.json')

// API version: learn.microsoft.com/azure/templates/microsoft.keyvault/2023-07-01/vaults
resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource identitySecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, identityPrincipalId, role.KeyVaultSecretsUser)
  scope: vault
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.KeyVaultSecretsUser)
  }
}
