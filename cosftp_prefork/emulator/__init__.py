"""The demo's and the tests' COS endpoint (moto's S3 engine behind a COS shim); the product
never imports it.
"""
