"""The catalogue declares every table and column of the data model, with its class."""

from __future__ import annotations

import pytest

from datasets import CatalogueError, ColumnClass, TableKind, load_catalogue
from datasets.catalogue import shipped_catalogue_dir

EXPECTED = {
    "patients": {"person_id": "person_key", "nhs_number": "direct_identifier",
                 "date_of_birth": "direct_identifier", "postcode": "direct_identifier",
                 "year_of_birth": "quasi_identifier", "sex": "quasi_identifier",
                 "ethnicity": "quasi_identifier", "lsoa_code": "quasi_identifier",
                 "local_authority_code": "quasi_identifier", "practice_code": "quasi_identifier",
                 "registration_date": "sensitive"},
    "gp_events": {"person_id": "person_key", "event_date": "sensitive",
                  "snomed_code": "sensitive", "value": "measure"},
    "hospital_admissions": {"spell_id": "direct_identifier", "person_id": "person_key",
                            "admission_date": "sensitive", "discharge_date": "sensitive",
                            "admission_method": "sensitive", "primary_diagnosis": "sensitive",
                            "length_of_stay": "measure", "provider_code": "quasi_identifier",
                            "discharge_destination": "sensitive"},
    "social_care": {"person_id": "person_key", "local_authority_code": "quasi_identifier",
                    "service_type": "sensitive", "support_reason": "sensitive",
                    "start_date": "sensitive", "end_date": "sensitive", "weekly_cost": "measure"},
    "deaths": {"person_id": "person_key", "date_of_death": "sensitive",
               "underlying_cause": "sensitive", "place_of_death": "sensitive"},
    "lsoa_lookup": {"lsoa_code": "public", "local_authority_code": "public",
                    "local_authority_name": "public", "icb_code": "public", "imd_decile": "public"},
    "opt_outs": {"person_id": "internal", "opt_out_date": "internal"},
    "study_consents": {"person_id": "internal", "study_id": "internal",
                       "consented_on": "internal", "withdrawn_on": "internal"},
}


def test_every_table_and_column_of_the_data_model():
    cat = load_catalogue()
    assert set(cat.tables) == set(EXPECTED)
    for name, columns in EXPECTED.items():
        table = cat.table(name)
        assert {c.name: c.cls.value for c in table.columns} == columns, name
        assert all(c.description for c in table.columns)


def test_registers_are_engine_only():
    cat = load_catalogue()
    assert cat.register(TableKind.OPT_OUT_REGISTER).name == "opt_outs"
    assert cat.register(TableKind.CONSENT_REGISTER).name == "study_consents"
    assert cat.table("patients").person_key == "person_id"
    assert cat.table("lsoa_lookup").person_key is None
    assert cat.table("lsoa_lookup").key == "lsoa_code"


def test_adding_a_dataset_is_adding_a_file(tmp_path):
    for f in shipped_catalogue_dir().glob("*.toml"):
        (tmp_path / f.name).write_text(f.read_text())
    (tmp_path / "survey.toml").write_text('''
[dataset]
name = "survey"
title = "Resident survey"
description = "A survey extract."
[[tables]]
name = "survey_responses"
kind = "person_level"
description = "One row per response."
columns = [
  { name = "person_id", type = "BIGINT", class = "person_key", description = "Pseudonym." },
  { name = "loneliness", type = "INTEGER", class = "sensitive", description = "Score 1-5." },
]
''')
    cat = load_catalogue(tmp_path)
    assert cat.table("survey_responses").columns[1].cls is ColumnClass.SENSITIVE


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ('[dataset]\nname="x"\ntitle="x"\ndescription="x"\n[[tables]]\nname="t"\nkind="weird"\n'
         'description="d"\ncolumns=[]', "tables[0].kind: 'weird' is not a table kind"),
        ('[dataset]\nname="x"\ntitle="x"\ndescription="x"\n[[tables]]\nname="t"\n'
         'kind="person_level"\ndescription="d"\ncolumns=[{name="a", type="INTEGER", '
         'class="secret", description="d"}]', "columns[0].class: 'secret' is not a column class"),
        ('[dataset]\nname="x"\ntitle="x"\ndescription="x"\n[[tables]]\nname="t"\n'
         'kind="person_level"\ndescription="d"\ncolumns=[{name="a", type="INTEGER", '
         'class="sensitive", description="d"}]', "needs exactly one person_key"),
    ],
)
def test_broken_catalogue_names_file_and_field(tmp_path, text, expect):
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(CatalogueError) as info:
        load_catalogue(tmp_path)
    assert "bad.toml" in str(info.value) and expect in str(info.value)
