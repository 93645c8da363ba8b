// Lets the app's identity (and the developer) call an Azure OpenAI account, new or existing,
// in whatever resource group it lives in: Cognitive Services OpenAI User, the narrowest
// built-in role that can call completions (not the broader Cognitive Services User).
param accountName string
param identityPrincipalId string
@description('Developer (or CI) principal; empty for none.')
param developerPrincipalId string = ''
@allowed(['User', 'ServicePrincipal', 'Group'])
param developerPrincipalType string = 'User'

var role = loadJsonContent('roles.json')

resource account 'Microsoft.CognitiveServices/accounts@2023-05-01' existing = {
  name: accountName
}

resource identityOpenAiUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, identityPrincipalId, role.CognitiveServicesOpenAIUser)
  scope: account
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.CognitiveServicesOpenAIUser)
  }
}

resource developerOpenAiUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(developerPrincipalId)) {
  name: guid(account.id, developerPrincipalId, role.CognitiveServicesOpenAIUser)
  scope: account
  properties: {
    principalId: developerPrincipalId
    principalType: developerPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.CognitiveServicesOpenAIUser)
  }
}

output endpoint string = account.properties.endpoint
