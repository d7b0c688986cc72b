"""Model delivery on the controller: the content-addressed blob store (blobs.py) and the signed
releases issued to devices and bundles (releases.py). DeliveryService (services/delivery.py)
serves the blobs to the devices they were issued to."""
