// The Event Grid subscription that delivers the custom topic's events to the
// completion_from_event_grid function. Deployed by infra/hooks/postdeploy.py after `azd deploy`:
// Event Grid refuses a subscription to a function that does not exist yet, and `azd provision`
// runs before the code is deployed.
param topicName string
param functionAppName string
@description('The Event Grid triggered function (function_app.py).')
param functionName string
param storageAccountName string
param deadLetterContainerName string
param deadLetterIdentityId string
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

resource topic 'Microsoft.EventGrid/topics@2022-06-15' existing = {
  name: topicName
}

resource site 'Microsoft.Web/sites@2023-12-01' existing = {
  name: functionAppName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-01-01' existing = {
  name: storageAccountName
}

// API version: learn.microsoft.com/azure/templates/microsoft.eventgrid/2022-06-15/eventsubscriptions
resource subscription 'Microsoft.EventGrid/eventSubscriptions@2022-06-15' = {
  name: functionName
  scope: topic
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${site.id}/functions/${functionName}'
        maxEventsPerBatch: 1
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'UserAssigned'
        userAssignedIdentity: deadLetterIdentityId
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: storage.id
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}

output name string = subscription.name
